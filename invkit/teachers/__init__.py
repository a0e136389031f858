"""Teacher sources: torchvision, checkpoint files, resnet50v15, CIFAR ResNets, digits.

(Being written: see issue 4.)
"""

from __future__ import annotations

from invkit.hookspecs import hookimpl


def load_teacher(spec: str, arch: str | None = None, weights: str | None = None,
                 trust_checkpoint: bool = False, device: str = "cpu"):
    """Load a teacher by spec: a registered name, ``torchvision:NAME`` or ``checkpoint:PATH``."""
    raise NotImplementedError


@hookimpl
def invkit_teachers():
    return []
