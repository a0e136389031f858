"""The BatchNorm feature-statistics prior (``bn-stats``): DeepInversion's feature-distribution term.

For every ``BatchNorm2d`` layer ``l`` of the teacher, the per-channel mean and *biased*
variance of the layer's input (over batch and spatial dimensions) should match the
running statistics the layer stored during training::

    bn-stats = sum_l m_l * ( ||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2 )

with ``m_l = first_bn_multiplier`` for the first BN layer in module order (of those the
forward runs) and 1 for the rest.

Example:
    >>> import torch
    >>> from invkit import load_teacher
    >>> teacher = load_teacher("digits")
    >>> x, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    >>> prior = BNStats(first_bn_multiplier=10.0)
    >>> with (0.01 * prior).attached(Setup(teacher)):
    ...     logits = teacher.module(x)          # the hooks keep every layer's input
    ...     loss = prior(Step(x, logits, targets, teacher))
    >>> loss.dim(), bool(loss > 0)
    (0, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from invkit import InvkitError, Prior, Setup, Step, define_prior

if TYPE_CHECKING:  # torch is imported when the prior first runs: listings stay fast
    import torch
    from torch import nn


def bn_input_stats(*xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, biased variance) of each (N, C, H, W) tensor in ``xs``,
    concatenated; differentiable.

    Computed by :class:`~invkit_plugins.deepinversion.moments.ChannelMoments` (sums of
    ``x`` and ``x**2``, a backward that is one multiply-add over each ``x``, one autograd
    node for all of them). Autograd's ``torch.var_mean`` took 2.5x as long for forward
    and backward together on ResNet-18's BatchNorm inputs (CPU), about a tenth of a
    DeepInversion step. Float32 for lower precisions; float64 stays float64.

    Example:
        >>> import torch
        >>> x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
        >>> mean, var = bn_input_stats(x, x[:, :2])
        >>> ref_var, ref_mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        >>> bool(torch.allclose(mean[:3], ref_mean) and torch.allclose(var[:3], ref_var))
        True
        >>> mean.shape
        torch.Size([5])
    """
    import torch

    dtype = torch.float64 if all(x.dtype == torch.float64 for x in xs) else torch.float32
    # A module of its own: it imports torch, which listings must not.
    from invkit_plugins.deepinversion.moments import ChannelMoments

    return ChannelMoments.apply(*(x.to(dtype) for x in xs))


class Segments:
    """Consecutive segments of a vector's last dimension (one per BatchNorm layer's
    channels), with their L2 norms in one reduction.

    Example:
        >>> import torch
        >>> Segments([2, 3]).norms(torch.tensor([3.0, 4.0, 1.0, 0.0, 2.0]))
        tensor([5.0000, 2.2361])
    """

    def __init__(self, sizes: Sequence[int], device: torch.device | str = "cpu"):
        import torch

        self.sizes = tuple(sizes)
        self.rows = torch.repeat_interleave(torch.arange(len(self.sizes), device=device),
                                            torch.tensor(self.sizes, device=device))
        self.columns = torch.cat([torch.arange(n, device=device) for n in self.sizes])

    def norms(self, values: torch.Tensor) -> torch.Tensor:
        """``torch.linalg.vector_norm`` of each segment of ``values``' last dimension."""
        import torch

        # Each segment becomes a zero-padded row: padding adds exact zeros to the sums.
        padded = values.new_zeros(*values.shape[:-1], len(self.sizes), max(self.sizes))
        padded[..., self.rows, self.columns] = values
        return torch.linalg.vector_norm(padded, dim=-1)


@define_prior("bn-stats", "BatchNorm input statistics vs running statistics (DeepInversion)",
              default_weight=0.01,
              help={"first_bn_multiplier": "weight of the first BatchNorm layer's term"})
class BNStats(Prior):
    """Match every BatchNorm2d input's batch statistics to the layer's running statistics.

    Forward hooks are registered on the teacher in :meth:`setup` and removed in
    :meth:`teardown`. A hook only keeps its layer's input; calling the prior computes
    every layer's term of the most recent forward pass at once (one autograd node for all
    layers' statistics), so extra forwards, e.g. for evaluation, never pile up. Layers the
    forward skipped (GoogLeNet's auxiliary heads in eval mode) have no term.

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
        self._layers: list[nn.BatchNorm2d] = []
        self._inputs: list[torch.Tensor | None] = []
        self._terms: list[torch.Tensor] | None = None  # of the inputs last computed
        self._segments: dict[tuple[int, ...], Segments] = {}

    def setup(self, setup: Setup) -> None:
        from torch import nn

        layers = [m for m in setup.teacher.module.modules() if isinstance(m, nn.BatchNorm2d)]
        if not layers:
            raise InvkitError(
                f"prior bn-stats needs a teacher with BatchNorm2d layers; teacher "
                f"{setup.teacher.name!r} has none (drop the term with --r-feature 0)"
            )
        self.teardown()
        self._layers = layers
        self._inputs = [None] * len(layers)
        for index, layer in enumerate(layers):
            self._handles.append(layer.register_forward_hook(self._hook(index)))

    def _hook(self, index: int):
        def hook(module: nn.BatchNorm2d, inputs, output) -> None:
            self._inputs[index] = inputs[0]
            self._terms = None
        return hook

    def teardown(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._layers = []
        self._inputs = []
        self._terms = None
        self._segments = {}

    def layer_losses(self) -> list[torch.Tensor]:
        """The unweighted per-layer terms of the most recent forward pass (module order,
        the layers that ran)."""
        # Not the hook handles: torch.compile cannot trace them (a graph break per step).
        if not self._layers:
            raise RuntimeError("bn-stats is not attached: use objective.attached(Setup(teacher))")
        if self._terms is None:
            ran = tuple(i for i, x in enumerate(self._inputs) if x is not None)
            if not ran:
                raise RuntimeError("bn-stats: the teacher has not run since setup")
            self._terms = self._compute(ran)
            # The graph keeps what the backward needs; holding the inputs until the next
            # forward would keep every layer's activations alive across steps.
            self._inputs = [None] * len(self._layers)
        return list(self._terms)

    def _compute(self, ran: tuple[int, ...]) -> list[torch.Tensor]:
        import torch

        xs = [self._inputs[i] for i in ran]
        layers = [self._layers[i] for i in ran]
        # Statistics and the loss in float32, whatever autocast does around us.
        with torch.autocast(xs[0].device.type, enabled=False):
            mean, var = bn_input_stats(*xs)
            running_mean = torch.cat([bn.running_mean for bn in layers]).to(mean.dtype)
            running_var = torch.cat([bn.running_var for bn in layers]).to(mean.dtype)
            if ran not in self._segments:
                self._segments[ran] = Segments([bn.num_features for bn in layers], mean.device)
            norms = self._segments[ran].norms(torch.stack([mean - running_mean,
                                                           var - running_var]))
            return list((norms[0] + norms[1]).unbind())

    def __call__(self, step: Step) -> torch.Tensor:
        terms = self.layer_losses()
        total = self.first_bn_multiplier * terms[0]
        for term in terms[1:]:
            total = total + term
        return total
