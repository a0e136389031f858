"""The batch plan (invkit.pipeline.plan): exact labels, seeds and refusals."""

from __future__ import annotations

import pytest

from invkit.errors import InvkitError
from invkit.pipeline.plan import Batch, batch_seed, plan_batches


def test_batch_seeds_are_pinned():
    # blake2b-64 of "invkit-batch:SEED:INDEX", big-endian, top bit cleared (pinned so a
    # dataset regenerates identically across versions).
    assert batch_seed(0, 0) == 4592265083302010497
    assert batch_seed(7, 1) == 7261315143668756251      # odd: the low bit is kept
    assert batch_seed(0, 1) == 2563779294163457524      # the hash's top bit was set
    assert batch_seed(1, 0) == 2250842619033917326


def test_default_plan_is_one_batch_seeded_zero():
    assert plan_batches(num_classes=1, batch_size=1) == [Batch(0, (0,), batch_seed(0, 0))]
    assert plan_batches(num_classes=3, batch_size=2, images_per_class=1) == [
        Batch(0, (0, 1), batch_seed(0, 0)), Batch(1, (2,), batch_seed(0, 1))]
    assert plan_batches(num_classes=4, batch_size=3, num_batches=2, targets=[3, 1], seed=5) == [
        Batch(0, (3, 1, 3), batch_seed(5, 0)), Batch(1, (1, 3, 1), batch_seed(5, 1))]


def test_random_labels_shuffle_the_same_balanced_labels():
    plan = plan_batches(num_classes=5, batch_size=5, images_per_class=2, random_labels=True, seed=3)
    labels = [t for b in plan for t in b.targets]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert labels != [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    again = plan_batches(num_classes=5, batch_size=5, images_per_class=2, random_labels=True, seed=3)
    other = plan_batches(num_classes=5, batch_size=5, images_per_class=2, random_labels=True, seed=4)
    assert again == plan and [b.targets for b in other] != [b.targets for b in plan]


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 0, "batch_size": 2}, "num_classes must be at least 1, got 0"),
    ({"num_classes": 2, "batch_size": 0}, "batch size must be at least 1, got 0"),
    ({"num_classes": 2, "batch_size": 2, "num_batches": 1, "images_per_class": 1},
     "give num_batches or images_per_class, not both"),
    ({"num_classes": 2, "batch_size": 2, "num_batches": 0}, "num_batches must be at least 1, got 0"),
    ({"num_classes": 2, "batch_size": 2, "images_per_class": 0},
     "images_per_class must be at least 1, got 0"),
    ({"num_classes": 2, "batch_size": 2, "targets": []}, "targets must name at least one class"),
    ({"num_classes": 3, "batch_size": 2, "targets": [1, 3, -1]},
     "target 3 is out of range: classes are 0..2"),
    ({"num_classes": 3, "batch_size": 2, "targets": [-1, 3]},
     "target -1 is out of range: classes are 0..2"),
])
def test_bad_plans_are_refused_with_one_line(kwargs, message):
    with pytest.raises(InvkitError) as error:
        plan_batches(**kwargs)
    assert str(error.value) == message


def test_smallest_valid_values_are_accepted():
    assert plan_batches(num_classes=2, batch_size=1, num_batches=1, targets=[1]) == [
        Batch(0, (1,), batch_seed(0, 0))]
    assert [b.targets for b in plan_batches(num_classes=2, batch_size=4, images_per_class=1)] == [
        (0, 1)]
