"""Per-channel batch moments with a one-pass backward, for the ``bn-stats`` prior."""

from __future__ import annotations

import torch


class ChannelMoments(torch.autograd.Function):
    """``(mean, biased variance)`` per channel of an (N, C, H, W) tensor.

    Forward: sums of ``x`` and ``x**2``, reduced over the contiguous spatial dimensions
    first. Backward: one multiply-add over ``x``,
    ``dL/dx = 2 (x - mean) dL/dvar / n + dL/dmean / n`` with ``n = N*H*W``.

    Example:
        >>> x = torch.arange(8.0).view(2, 1, 2, 2)
        >>> mean, var = ChannelMoments.apply(x)
        >>> mean.tolist(), var.tolist()
        ([3.5], [5.25])
    """

    @staticmethod
    def forward(ctx, x):
        n = x.numel() // x.shape[1]
        mean = x.sum(dim=(2, 3)).sum(dim=0) / n
        # E[x^2] - mean^2: BatchNorm inputs' means are of the order of their spreads, so
        # the cancellation costs a few ulps of E[x^2] at most.
        var = (x.square().sum(dim=(2, 3)).sum(dim=0) / n - mean.square()).clamp_min(0)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean, grad_var):
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
        scale = (2.0 / n) * grad_var
        shift = grad_mean / n - scale * mean
        shape = (1, -1, 1, 1)
        return torch.addcmul(shift.view(shape), x, scale.view(shape))
