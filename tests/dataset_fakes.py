"""A deterministic stand-in for a method's ``generate(batch)`` (tests of invkit.pipeline)."""

from __future__ import annotations

import torch

from invkit.pipeline import Batch, GeneratedBatch


def fake_generate(batch: Batch, size: int = 8) -> GeneratedBatch:
    """Images that depend on the batch's seed and targets only, like a seeded method."""
    generator = torch.Generator().manual_seed(batch.seed)
    n = len(batch.targets)
    images = torch.rand(n, 3, size, size, generator=generator)
    targets = torch.tensor(batch.targets)
    # The "teacher" gets every third image wrong, so accuracies are not trivially 1.
    pred = torch.where(torch.arange(n) % 3 == 2, (targets + 1) % 10, targets)
    return GeneratedBatch(images01=images, targets=targets, teacher_pred=pred,
                          teacher_conf=torch.full((n,), 0.75), verifier_pred=targets.clone(),
                          losses={"total": float(batch.index), "main": 0.5},
                          stats={"it_per_s": 10.0, "timings": {"stage1": 0.1}})
