"""The BatchNorm feature-statistics prior (``bn-stats``): DeepInversion's feature-distribution term.

For every ``BatchNorm2d`` layer ``l`` of the teacher, the per-channel mean and *biased*
variance of the layer's input (over batch and spatial dimensions) should match the
running statistics the layer stored during training::

    bn-stats = sum_l m_l * ( ||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2 )

with ``m_l = first_bn_multiplier`` for the first BN layer in module order and 1 for the
rest.

Example:
    >>> import torch
    >>> from invkit import load_teacher
    >>> teacher = load_teacher("digits")
    >>> x, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    >>> prior = BNStats(first_bn_multiplier=10.0)
    >>> with (0.01 * prior).attached(Setup(teacher)):
    ...     logits = teacher.module(x)          # the hooks record every layer's term
    ...     loss = prior(Step(x, logits, targets, teacher))
    >>> loss.dim(), bool(loss > 0)
    (0, True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from invkit import InvkitError, Prior, Setup, Step, define_prior

if TYPE_CHECKING:  # torch is imported when the prior first runs: listings stay fast
    import torch
    from torch import nn


def bn_input_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, biased variance) of ``x`` (N, C, H, W), differentiable.

    Computed by :class:`~invkit_plugins.deepinversion.moments.ChannelMoments` (sums of
    ``x`` and ``x**2``, a backward that is one multiply-add over ``x``). Autograd's
    ``torch.var_mean`` took 2.5x as long for forward and backward together on ResNet-18's
    BatchNorm inputs (CPU), about a tenth of a DeepInversion step. Float32 for lower
    precisions; float64 stays float64.

    Example:
        >>> import torch
        >>> x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
        >>> mean, var = bn_input_stats(x)
        >>> ref_var, ref_mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        >>> bool(torch.allclose(mean, ref_mean) and torch.allclose(var, ref_var))
        True
    """
    import torch

    if x.dtype != torch.float64:
        x = x.float()
    # A module of its own: it imports torch, which listings must not.
    from invkit_plugins.deepinversion.moments import ChannelMoments

    return ChannelMoments.apply(x)


def bn_layer_loss(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``||mu - running_mean||_2 + ||var - running_var||_2`` for one layer's input ``x``."""
    import torch

    mean, var = bn_input_stats(x)
    return (torch.linalg.vector_norm(mean - bn.running_mean.float())
            + torch.linalg.vector_norm(var - bn.running_var.float()))


@define_prior("bn-stats", "BatchNorm input statistics vs running statistics (DeepInversion)",
              default_weight=0.01,
              help={"first_bn_multiplier": "weight of the first BatchNorm layer's term"})
class BNStats(Prior):
    """Match every BatchNorm2d input's batch statistics to the layer's running statistics.

    Forward hooks are registered on the teacher in :meth:`setup` and removed in
    :meth:`teardown`. Each forward pass overwrites the per-layer terms (so extra forwards,
    e.g. for evaluation, never pile up); calling the prior sums the terms of the most
    recent forward pass.

    Example:
        >>> from invkit import CrossEntropy
        >>> objective = CrossEntropy() + 0.01 * BNStats(first_bn_multiplier=10)
        >>> objective.describe()
        '1*cross-entropy + 0.01*bn-stats(first_bn_multiplier=10)'
    """

    def __init__(self, first_bn_multiplier: float = 10.0):
        super().__init__(first_bn_multiplier=float(first_bn_multiplier))
        self.first_bn_multiplier = float(first_bn_multiplier)
        self._handles: list = []
        self._terms: list[torch.Tensor | None] = []  # pragma: no mutate (None: also "not attached")

    def setup(self, setup: Setup) -> None:
        from torch import nn

        layers = [m for m in setup.teacher.module.modules() if isinstance(m, nn.BatchNorm2d)]
        if not layers:
            raise InvkitError(
                f"prior bn-stats needs a teacher with BatchNorm2d layers; teacher "
                f"{setup.teacher.name!r} has none (drop the term with --r-feature 0)"
            )
        self.teardown()
        self._terms = [None] * len(layers)
        for index, layer in enumerate(layers):
            self._handles.append(layer.register_forward_hook(self._hook(index)))

    def _hook(self, index: int):
        import torch

        def hook(module: nn.BatchNorm2d, inputs, output) -> None:
            # Statistics and the loss in float32, whatever autocast does around us.
            with torch.autocast(inputs[0].device.type, enabled=False):
                self._terms[index] = bn_layer_loss(inputs[0], module)
        return hook

    def teardown(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._terms = []  # pragma: no mutate (None: also "not attached")

    def layer_losses(self) -> list[torch.Tensor]:
        """The unweighted per-layer terms of the most recent forward pass (module order)."""
        # Not the hook handles: torch.compile cannot trace them (a graph break per step).
        if not self._terms:
            raise RuntimeError("bn-stats is not attached: use objective.attached(Setup(teacher))")
        if any(t is None for t in self._terms):
            raise RuntimeError("bn-stats: the teacher has not run since setup")
        return list(self._terms)

    def __call__(self, step: Step) -> torch.Tensor:
        terms = self.layer_losses()
        total = self.first_bn_multiplier * terms[0]
        for term in terms[1:]:
            total = total + term
        return total
