"""An example invkit plugin: a teacher (``example-tiny``), a prior (``example-brightness``)
and a method (``example-descent``).

invkit finds this module through the ``invkit`` entry point in ``pyproject.toml``
and calls the ``@hookimpl`` functions below; each returns spec records. It imports
only invkit's public API (``from invkit import ...``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from invkit import (
    Checkpoint, MethodSpec, Prior, Setup, Step, Teacher, TeacherMeta, TeacherSpec,
    define_prior, finish, frozen, hookimpl, module_device, option,
)

__version__ = "0.1.0"


class TinyNet(nn.Module):
    """Two conv + BatchNorm blocks and a linear classifier (32 px, 10 classes)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def build_tiny(weights: str | None = None) -> Teacher:
    """The teacher factory. invkit calls it with ``weights=None`` (the default) or
    ``weights="none"``; a weights file is loaded by invkit into the ``"none"`` network."""
    # Seeded so that the "default weights" are the same every time, without a download.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if weights is None else 1)
        module = TinyNet()
    meta = TeacherMeta(arch="example-tiny", input_size=32, num_classes=10,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                       class_names=tuple(f"class{i}" for i in range(10)),
                       weights="seeded" if weights is None else weights)
    return Teacher(module=module.eval(), meta=meta, name="example-tiny")


@define_prior("example-brightness", "mean pixel value towards a target (example plugin)",
              default_weight=0.1, help={"target": "the mean pixel value to reach"})
class Brightness(Prior):
    """Squared distance of the batch's mean pixel value (in [0, 1]) from ``target``."""

    def __init__(self, target: float = 0.5):
        super().__init__(target=target)
        self.target = target

    def __call__(self, step):
        images01 = step.teacher.denormalize(step.inputs.float())
        return (images01.mean() - self.target) ** 2


@hookimpl
def invkit_teachers():
    yield TeacherSpec("example-tiny", "a tiny BatchNorm CNN (example plugin)",
                      factory=build_tiny, source="example", input_size=32, num_classes=10,
                      default_weights="seeded")


@hookimpl
def invkit_priors():
    yield Brightness.spec  # name, weight and options come from @define_prior and __init__


# --------------------------------------------------------------------------- a method


@dataclass(frozen=True)
class DescentOptions:
    """The method's own options; ``invkit run example-descent`` gets them as flags."""

    steps: int = option(30, "gradient steps per batch", min=1)
    lr: float = option(0.05, "step size", min=0)


class PixelDescent:
    """Plain gradient descent on the pixels for the objective: the smallest whole method.

    Core gives it everything else: plans, --resume, torchrun, progress and output files.
    """

    def __init__(self, teacher, objective, *, config, student=None, verifier=None):
        self.teacher, self.objective, self.config = teacher, objective, config
        self.student, self.verifier = student, verifier

    def generate(self, targets, seed=0, callback=None):
        steps, size = self.config.steps, self.teacher.meta.input_size
        device = module_device(self.teacher.module)
        noise = torch.randn(len(targets), 3, size, size,
                            generator=torch.Generator().manual_seed(seed))
        x = noise.to(device).requires_grad_(True)
        targets = torch.as_tensor(list(targets), device=device)
        optimizer = torch.optim.SGD([x], lr=self.config.lr)
        with frozen(self.teacher.module), self.objective.attached(Setup(self.teacher)):
            for i in range(1, steps + 1):
                step = Step(x, self.teacher.module(x), targets, self.teacher, iteration=i)
                total, terms = self.objective(step)
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
                losses = {**{k: float(v) for k, v in terms.items()}, "total": float(total)}
                if callback is not None:
                    callback(Checkpoint(1, 1, i, steps, i, steps, lr=self.config.lr,
                                        losses=losses, inputs=x.detach()))
        return finish(self.teacher, x.detach(), targets, losses, verifier=self.verifier,
                      iterations=steps)


@hookimpl
def invkit_methods():
    yield MethodSpec("example-descent", "gradient descent on pixels (example plugin)",
                     factory=PixelDescent, options=DescentOptions,
                     default_priors=("cross-entropy", "tv-l2:1e-3"))
