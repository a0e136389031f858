"""Built-in verifiers: judge generated images with an independent classifier.

A verifier object has ``__call__(images01, targets) -> dict`` of named figures and
``predict(images01) -> logits``; ``invkit run`` (its verifier figure and the manifest's
``verifier_pred``) and ``invkit eval`` build theirs through the verifiers registry.

Example:
    >>> from invkit.teachers import load_teacher
    >>> from invkit.teachers.digits import digits_dataset
    >>> images01, targets = digits_dataset("heldout")     # real held-out digits
    >>> verify = TopKAccuracy(load_teacher("digits-verifier"))
    >>> verify(images01[:100], targets[:100])
    {'top1': 1.0, 'top5': 1.0}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from invkit.hookspecs import hookimpl
from invkit.specs import Option, Teacher, VerifierSpec

if TYPE_CHECKING:  # imported on first use: listings stay fast
    import torch


class TopKAccuracy:
    """Top-1 (and top-k where the classifier has more than k classes) accuracy of ``network``."""

    def __init__(self, network: Teacher, k: int = 5):
        self.network = network
        self.k = k

    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        """The classifier's logits on images in [0, 1], resized to its input size."""
        import torch

        module = self.network.module
        param = next(module.parameters(), None)
        device = param.device if param is not None else images01.device
        with torch.no_grad():
            return module(self.network.prepare(images01.to(device, torch.float32))).float()

    def __call__(self, images01: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        logits = self.predict(images01)
        targets = targets.to(logits.device)
        return topk_accuracy(logits, targets, self.k)


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Top-1 accuracy, and top-k where there are more than ``k`` classes (0 for no images).

    Example:
        >>> import torch
        >>> topk_accuracy(torch.tensor([[2., 1.], [0., 3.]]), torch.tensor([0, 0]))
        {'top1': 0.5}
    """
    n = targets.numel()
    figures = {"top1": (logits.argmax(1) == targets).float().mean().item() if n else 0.0}
    if logits.shape[1] > k:
        hit = (logits.topk(k, dim=1).indices == targets[:, None]).any(1)
        figures[f"top{k}"] = hit.float().mean().item() if n else 0.0
    return figures


def build_verifier(network: Teacher, name: str = "accuracy", **options):
    """The registered verifier ``name`` (default ``accuracy``) around ``network``: what
    ``invkit run`` and ``invkit eval`` judge images with.

    Example:
        >>> from invkit import load_teacher
        >>> build_verifier(load_teacher("digits-verifier")).k
        5
    """
    from invkit.registry import registry
    from invkit.specs import parse_options

    spec = registry("verifier").get(name)
    return spec.factory(network, **parse_options(f"verifier {name!r}", spec.options, options))


def as_verifier(verifier):
    """A verifier object: ``None`` stays ``None``, a :class:`Teacher` network is wrapped in
    :class:`TopKAccuracy` (the ``accuracy`` verifier), anything else is returned as it is.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> as_verifier(load_teacher("digits-verifier")).k
        5
    """
    if isinstance(verifier, Teacher):
        return build_verifier(verifier)
    return verifier


@hookimpl
def invkit_verifiers():
    yield VerifierSpec(
        "accuracy", "top-1/top-k accuracy of a classifier (any teacher spec) on the images",
        factory=TopKAccuracy, options=(Option("k", int, 5, "k of the top-k figure"),),
    )
