"""Built-in generic priors, usable by any method: cross-entropy, tv-l1, tv-l2, l2.

Example:
    >>> objective = CrossEntropy() + 1e-4 * TotalVariation(p=2) + 1e-5 * L2Norm()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from invkit.hookspecs import hookimpl
from invkit.objective import Prior, Step, define_prior

if TYPE_CHECKING:  # torch is imported when a prior first runs: listings stay fast
    import torch


@define_prior("cross-entropy", "cross-entropy of the teacher's logits vs the targets")
class CrossEntropy(Prior):
    """Cross-entropy of the teacher's logits against the targets (the "main loss")."""

    def __call__(self, step: Step) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(step.logits.float(), step.targets)


def neighbour_differences(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Horizontal, vertical and both diagonal differences between neighbouring pixels."""
    return (
        x[..., :, :-1] - x[..., :, 1:],
        x[..., :-1, :] - x[..., 1:, :],
        x[..., 1:, :-1] - x[..., :-1, 1:],
        x[..., :-1, :-1] - x[..., 1:, 1:],
    )


class TotalVariation(Prior):
    """Total variation over four neighbour directions.

    ``p=2``: sum of the L2 norms of the four difference tensors; ``p=1``: sum of their
    mean absolute values.
    """

    def __init__(self, p: int = 2):
        super().__init__()
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, not {p!r}")
        self.p = p
        self.name = f"tv-l{p}"

    def __call__(self, step: Step) -> torch.Tensor:
        import torch

        diffs = neighbour_differences(step.inputs.float())
        if self.p == 2:
            return sum(torch.linalg.vector_norm(d) for d in diffs)
        return sum(d.abs().mean() for d in diffs)


@define_prior("l2", "mean L2 norm of each image", default_weight=1e-5)
class L2Norm(Prior):
    """Mean over the batch of each image's L2 norm."""

    def __call__(self, step: Step) -> torch.Tensor:
        import torch

        return torch.linalg.vector_norm(step.inputs.float().flatten(1), dim=1).mean()


@define_prior("tv-l1", "total variation (mean |difference|, 4 directions)", default_weight=0.0)
class TotalVariationL1(TotalVariation):
    """:class:`TotalVariation` with ``p=1``."""

    def __init__(self):
        super().__init__(p=1)


@define_prior("tv-l2", "total variation (L2 norm of differences, 4 directions)",
              default_weight=1e-4)
class TotalVariationL2(TotalVariation):
    """:class:`TotalVariation` with ``p=2``."""

    def __init__(self):
        super().__init__(p=2)


@hookimpl
def invkit_priors():
    for prior in (CrossEntropy, TotalVariationL1, TotalVariationL2, L2Norm):
        yield prior.spec
