"""Finding, widening and resizing a classifier's head (its final ``nn.Linear``).

Used by ``invkit extend`` (widen the head to old + new classes, keeping the old rows)
and by checkpoint loading (a saved network whose class count differs from what its
architecture builds by default gets a head of the saved width before its weights load).

The head is found generically: a dotted attribute name when given (``"fc"``,
``"classifier.1"``, ``"heads.head"``), else the last ``nn.Linear`` in registration
order, which is the head of every torchvision classifier, the CIFAR ResNets and the
digits networks.

Example:
    >>> import torchvision
    >>> net = torchvision.models.resnet18(num_classes=10)
    >>> find_head(net, num_classes=10)[0]
    'fc'
    >>> widened = widen_linear(net.fc, 15)       # rows 0..9 are net.fc's
    >>> set_submodule(net, "fc", widened)
"""

from __future__ import annotations

import torch
from torch import nn

from invkit.errors import InvkitError


def find_head(module: nn.Module, num_classes: int | None = None,
              name: str | None = None) -> tuple[str, nn.Linear]:
    """The classification head of ``module``: ``(dotted name, the nn.Linear)``.

    ``name`` picks it explicitly; otherwise the last ``nn.Linear`` registered. When
    ``num_classes`` is given the head must have that many outputs: a network whose last
    Linear is not its head (a convolutional classifier, a head applied before another
    Linear) fails here rather than being widened wrongly.

    Example:
        >>> find_head(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), num_classes=3)[0]
        '1'
    """
    if name is not None:
        try:
            head = module.get_submodule(name)
        except AttributeError:
            raise InvkitError(f"the network has no layer named {name!r} "
                              "(give the dotted name of its final nn.Linear, e.g. 'fc')") from None
        if not isinstance(head, nn.Linear):
            raise InvkitError(f"layer {name!r} is a {type(head).__name__}, not an nn.Linear: "
                              "only a linear classification head can be found and resized")
    else:
        linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise InvkitError(f"cannot find the classification head of this "
                              f"{type(module).__name__}: it has no nn.Linear layer (only a "
                              "network ending in a linear classifier can be extended)")
        name, head = linears[-1]
    if num_classes is not None and head.out_features != num_classes:
        raise InvkitError(f"cannot find the classification head: layer {name!r} has "
                          f"{head.out_features} outputs but the network has {num_classes} "
                          "classes (name the head layer explicitly, e.g. --head fc)")
    return name, head


def set_submodule(module: nn.Module, name: str, child: nn.Module) -> None:
    """Replace the sub-module at dotted ``name`` (``"classifier.1"``) by ``child``."""
    parent_name, _, leaf = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, leaf, child)


def widen_linear(head: nn.Linear, out_features: int) -> nn.Linear:
    """A copy of ``head`` with ``out_features`` outputs: the old rows (and biases) kept,
    the added rows freshly initialised as ``nn.Linear`` does (torch's global generator).

    Example:
        >>> old = nn.Linear(4, 3)
        >>> torch.equal(widen_linear(old, 5).weight[:3], old.weight)
        True
    """
    if out_features < head.out_features:
        raise InvkitError(f"cannot widen a head of {head.out_features} outputs to "
                          f"{out_features}")
    wide = nn.Linear(head.in_features, out_features, bias=head.bias is not None,
                     device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        wide.weight[:head.out_features].copy_(head.weight)
        if head.bias is not None:
            wide.bias[:head.out_features].copy_(head.bias)
    wide.weight.requires_grad_(head.weight.requires_grad)
    return wide


def resize_head(module: nn.Module, num_classes: int, name: str | None = None) -> str:
    """Give ``module`` a fresh head of ``num_classes`` outputs (weights to be loaded next);
    returns the head's name. Used before loading a saved network of another class count.

    Example:
        >>> import torchvision
        >>> resize_head(torchvision.models.resnet18(), 15)
        'fc'
    """
    name, head = find_head(module, name=name)
    if head.out_features != num_classes:
        set_submodule(module, name, nn.Linear(head.in_features, num_classes,
                                              bias=head.bias is not None,
                                              device=head.weight.device,
                                              dtype=head.weight.dtype))
    return name


__all__ = ["find_head", "set_submodule", "widen_linear", "resize_head"]
