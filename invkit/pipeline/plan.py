"""The batch plan: which classes each batch holds, and its seed.

Each batch's seed is a hash of (run seed, batch index) only, so a dataset does not depend
on how many processes made it and any batch can be regenerated alone:
``generator.generate(batch.targets, seed=batch.seed)``.

Example:
    >>> [b.targets for b in plan_batches(num_classes=3, batch_size=2, images_per_class=2)]
    [(0, 1), (2, 0), (1, 2)]
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from invkit.errors import InvkitError


@dataclass(frozen=True)
class Batch:
    """One batch of the plan: its position, the class of each image, its seed.

    Example:
        >>> Batch(index=0, targets=(0, 1, 2), seed=123)
        Batch(index=0, targets=(0, 1, 2), seed=123)
    """

    index: int
    targets: tuple[int, ...]
    seed: int



def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a run seeded ``seed``: a hash of the two, nothing else.

    Example:
        >>> batch_seed(0, 3) == batch_seed(0, 3) != batch_seed(1, 3)
        True
    """
    digest = hashlib.blake2b(f"invkit-batch:{int(seed)}:{int(index)}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") & (2**63 - 1)  # fits torch.manual_seed


def plan_batches(*, num_classes: int, batch_size: int, targets: Sequence[int] | None = None,
                 num_batches: int | None = None, images_per_class: int | None = None,
                 random_labels: bool = False, seed: int = 0) -> list[Batch]:
    """A class-balanced list of batches.

    Labels cycle through ``targets`` (default: every class), so over the run each
    class gets its share: exactly ``images_per_class`` each (the last batch may be
    smaller), or, with ``num_batches``, counts differing by at most one. With
    ``random_labels`` the same balanced labels are shuffled across the run (seeded
    by ``seed``). Default: one batch.

    Example:
        >>> [b.targets for b in plan_batches(num_classes=3, batch_size=2, images_per_class=2)]
        [(0, 1), (2, 0), (1, 2)]
    """
    if num_classes < 1:
        raise InvkitError(f"num_classes must be at least 1, got {num_classes}")
    if batch_size < 1:
        raise InvkitError(f"batch size must be at least 1, got {batch_size}")
    if num_batches is not None and images_per_class is not None:
        raise InvkitError("give num_batches or images_per_class, not both")
    if num_batches is not None and num_batches < 1:
        raise InvkitError(f"num_batches must be at least 1, got {num_batches}")
    if images_per_class is not None and images_per_class < 1:
        raise InvkitError(f"images_per_class must be at least 1, got {images_per_class}")
    pool = list(range(num_classes)) if targets is None else [int(t) for t in targets]
    if not pool:
        raise InvkitError("targets must name at least one class")
    bad = [t for t in pool if not 0 <= t < num_classes]
    if bad:
        raise InvkitError(f"target {bad[0]} is out of range: classes are 0..{num_classes - 1}")

    if images_per_class is not None:
        total = images_per_class * len(pool)
    else:
        total = (num_batches or 1) * batch_size
    labels = [pool[i % len(pool)] for i in range(total)]
    if random_labels:
        random.Random(f"invkit-labels:{int(seed)}").shuffle(labels)
    return [
        Batch(index=b, targets=tuple(labels[start:start + batch_size]), seed=batch_seed(seed, b))
        for b, start in enumerate(range(0, total, batch_size))
    ]


def plan_fingerprint(batches: Sequence[Batch]) -> str:
    """A short hash of the plan (indices, targets, seeds), stored to detect a changed plan."""
    text = json.dumps([[b.index, list(b.targets), b.seed] for b in batches])
    return hashlib.sha256(text.encode()).hexdigest()[:16]

