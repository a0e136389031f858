"""ResNet-18 and ResNet-34 in their CIFAR form, for the paper's CIFAR-10 experiments.

CIFAR form: a 3x3 stride-1 stem and no max-pool (32 px inputs keep their resolution
into the first stage). No weights are bundled: pass your own with ``--weights FILE``.
Layer names follow torchvision's ResNet; checkpoints from the widespread CIFAR
training code (``shortcut`` for the projection, ``linear`` for the classifier) are
renamed on load, so they work as they are.

Example:
    >>> import torch
    >>> from invkit.teachers import load_teacher
    >>> network = load_teacher("cifar-resnet18", weights="none").module
    >>> # A checkpoint of the common CIFAR training code: "shortcut" and "linear" layers.
    >>> state = {k.replace("downsample", "shortcut").replace("fc.", "linear."): v
    ...          for k, v in network.state_dict().items()}
    >>> torch.save(state, "resnet18_cifar10.pth")
    >>> teacher = load_teacher("cifar-resnet18", weights="resnet18_cifar10.pth")
    >>> teacher.meta.input_size, teacher.meta.class_names[:3]
    (32, ('airplane', 'automobile', 'bird'))
"""

from __future__ import annotations

import functools
import re

from invkit.errors import InvkitError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# The statistics most CIFAR-10 training code (and DeepInversion's) normalises with.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
LAYERS = {"cifar-resnet18": (2, 2, 2, 2), "cifar-resnet34": (3, 4, 6, 3)}


def cifar_resnet(layers: tuple[int, int, int, int], num_classes: int = 10):
    """torchvision's BasicBlock ResNet with a 3x3 stride-1 stem and no max-pool."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, list(layers), num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def rename_key(key: str) -> str:
    """Map the common CIFAR code's names onto torchvision's (``shortcut`` -> ``downsample``,
    ``linear`` -> ``fc``)."""
    key = re.sub(r"(^|\.)shortcut\.", r"\1downsample.", key)
    return re.sub(r"(^|\.)linear\.", r"\1fc.", key)


def build(name: str, weights: str | None = None):
    """A CIFAR ResNet teacher; ``weights`` must be ``"none"`` (other files are loaded by
    :func:`invkit.teachers.load_teacher`)."""
    from invkit.specs import Teacher, TeacherMeta

    if weights is None:
        raise InvkitError(f"{name} has no bundled weights: pass --weights FILE (your CIFAR-10 "
                          "checkpoint) or --weights none for random init")
    if weights != "none":
        raise InvkitError(f"{name} accepts --weights none or a weights file, not {weights!r}")
    meta = TeacherMeta(arch=name, input_size=32, num_classes=10, mean=CIFAR10_MEAN,
                       std=CIFAR10_STD, class_names=CIFAR10_CLASSES, weights="none",
                       family="cifar10")
    return Teacher(module=cifar_resnet(LAYERS[name]).eval(), meta=meta, name=name)


def teacher_specs():
    from invkit.specs import TeacherSpec

    for name in LAYERS:
        depth = name.rsplit("resnet", 1)[1]
        yield TeacherSpec(
            name, f"ResNet-{depth}, CIFAR form (3x3 stem, no max-pool), CIFAR-10 classes; "
                  "your own weights via --weights FILE",
            factory=functools.partial(build, name), source="cifar", input_size=32,
            num_classes=10, default_weights="required", family="cifar10", batchnorm=True)
