"""An example invkit plugin: one teacher (``example-tiny``) and one prior
(``example-brightness``).

invkit finds this module through the ``invkit`` entry point in ``pyproject.toml``
and calls the ``@hookimpl`` functions below; each returns spec records.
"""

from __future__ import annotations

import torch
from torch import nn

from invkit import Option, Prior, PriorSpec, Teacher, TeacherMeta, TeacherSpec, hookimpl

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


class Brightness(Prior):
    """Squared distance of the batch's mean pixel value (in [0, 1]) from ``target``."""

    name = "example-brightness"

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
    yield PriorSpec("example-brightness", "mean pixel value towards a target (example plugin)",
                    factory=Brightness, default_weight=0.1,
                    options=(Option("target", float, 0.5, "the mean pixel value to reach"),))
