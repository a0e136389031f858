"""A tiny BatchNorm CNN teacher for the DeepInversion tests (random weights, 16 px)."""

from __future__ import annotations

import torch
from torch import nn

from invkit.hookspecs import hookimpl
from invkit.specs import Teacher, TeacherMeta, TeacherSpec

SIZE = 16
CLASSES = 4


def tiny_net(seed: int = 0, width: int = 8) -> nn.Module:
    # Seeded inside fork_rng: the global generator is left as it was, so a method that
    # draws from it instead of its own seeded generator is not hidden by a reseed here.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _layers(width)
    # Non-trivial running statistics so the BN term is not centred at zero.
    with torch.no_grad():
        for i, m in enumerate(m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.linspace(-0.5, 0.5, m.num_features) * (i + 1))
            m.running_var.copy_(torch.linspace(0.5, 2.0, m.num_features))
    return net.eval()


def _layers(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(width),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, CLASSES),
    )


def tiny_teacher(seed: int = 0, name: str = "tiny-bn") -> Teacher:
    meta = TeacherMeta(arch=name, input_size=SIZE, num_classes=CLASSES,
                       mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3),
                       class_names=("zero", "one", "two", "three"))
    return Teacher(module=tiny_net(seed), meta=meta, name=name)


def _factory(seed: int, name: str):
    def factory(weights=None, **kwargs):
        return tiny_teacher(seed, name)
    return factory


class TinyTeachers:
    """A test plugin: ``tiny-bn`` (the teacher) and ``tiny-bn-verifier``."""

    @hookimpl
    def invkit_teachers(self):
        yield TeacherSpec("tiny-bn", "tiny BN CNN (tests)", factory=_factory(0, "tiny-bn"),
                          source="tests", input_size=SIZE, num_classes=CLASSES)
        yield TeacherSpec("tiny-bn-verifier", "tiny BN CNN (tests)",
                          factory=_factory(1, "tiny-bn-verifier"), source="tests",
                          input_size=SIZE, num_classes=CLASSES)
