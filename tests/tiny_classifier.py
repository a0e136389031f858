"""Tiny classifiers and generated-looking datasets for the eval/distill/data tests (CPU, ms)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from invkit.hookspecs import hookimpl
from invkit.specs import Teacher, TeacherMeta, TeacherSpec

SIZE = 8
CLASSES = 10


def tiny_net(seed: int, width: int = 8, num_classes: int = CLASSES) -> nn.Module:
    """conv-BN-ReLU, global pooling, linear: enough to have a BN layer and 10 outputs.

    Seeded inside ``fork_rng``: the global generator is left untouched (see tests/di_tiny.py).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
        ).eval()


def tiny_teacher(seed: int = 0, arch: str = "tiny-kd", num_classes: int = CLASSES,
                 class_names: tuple[str, ...] | None = None) -> Teacher:
    meta = TeacherMeta(arch=arch, input_size=SIZE, num_classes=num_classes,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), class_names=class_names)
    return Teacher(module=tiny_net(seed, num_classes=num_classes), meta=meta, name=arch)


class TinyPlugin:
    """Registers ``tiny-kd`` (a teacher with fixed random weights) and ``tiny-kd-student``."""

    @hookimpl
    def invkit_teachers(self):
        def teacher(weights=None, **kwargs):
            return tiny_teacher(0, "tiny-kd")  # fixed weights whatever is asked

        def student(weights=None, **kwargs):
            return tiny_teacher(2, "tiny-kd-student")

        yield TeacherSpec("tiny-kd", "tiny test teacher", factory=teacher, source="test",
                          input_size=SIZE, num_classes=CLASSES)
        yield TeacherSpec("tiny-kd-student", "tiny test student", factory=student,
                          source="test", input_size=SIZE, num_classes=CLASSES)


def write_imagefolder(root: Path, images: torch.Tensor, targets: torch.Tensor,
                      names: dict[int, str] | None = None) -> Path:
    """Write uint8 images as PNGs under ``root/images/<class_dirname>/``, as a run does."""
    from PIL import Image

    from invkit.output import class_dirname

    for i, (image, target) in enumerate(zip(images, targets.tolist())):
        folder = root / "images" / class_dirname(target, CLASSES, (names or {}).get(target))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"00000_{i:03d}.png")
    return root


def write_shards(root: Path, images: torch.Tensor, targets: torch.Tensor, shard_size: int) -> Path:
    from safetensors.torch import save_file

    (root / "shards").mkdir(parents=True, exist_ok=True)
    for k, first in enumerate(range(0, images.shape[0], shard_size)):
        save_file({"images": images[first:first + shard_size].contiguous(),
                   "targets": targets[first:first + shard_size].contiguous()},
                  str(root / "shards" / f"shard_{k:05d}.safetensors"))
    return root


def random_uint8(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    targets = torch.randint(0, CLASSES, (n,), generator=g)
    return images, targets
