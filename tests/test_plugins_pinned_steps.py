"""What the first optimisation steps compute, pinned against an independent evaluation
(group h8): the seeded start, the augmentation stream, the ensemble's target order, Adam's
betas, the objective's terms and the priors' recorded options.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from invkit.objective import Setup, Step, build_objective, parse_prior
from invkit.specs import Stage
from invkit_plugins.deepinversion.adaptive import Competition
from invkit_plugins.deepinversion.bn_stats import BNStats
from invkit_plugins.deepinversion.method import DeepInversion, DIConfig, augment
from invkit_plugins.generative import method as fast_method
from invkit_plugins.plugin_inversion.method import PIIConfig, PlugInInversion
from tests.di_tiny import tiny_teacher

PRIORS = ["cross-entropy", "bn-stats:0.05,first_bn_multiplier=2", "tv-l2:1e-3"]


@pytest.mark.parametrize("plan", [(Stage(2, 2), Stage(1, 1)), (Stage(2, 1),)])
def test_di_first_step_loss_is_the_seeded_start_through_the_seeded_view(plan):
    teacher = tiny_teacher()
    objective = build_objective([parse_prior(p) for p in PRIORS])
    seen = []
    config = DIConfig(plan=plan, jitter=4, flip=True, save_every=1)
    DeepInversion(teacher, objective, config=config).generate([2, 1, 3], seed=6,
                                                             callback=seen.append)
    x0 = torch.randn((3, 3, 16, 16), generator=torch.Generator().manual_seed(6))
    view = augment(x0, plan[0].downsample, 4, True, random.Random(6))
    reference = build_objective([parse_prior(p) for p in PRIORS])
    with torch.no_grad(), reference.attached(Setup(teacher=teacher)):
        logits = teacher.module(view)
        total, terms = reference(Step(view, logits, torch.tensor([2, 1, 3]), teacher))
    first = seen[0 if plan[0].iterations > 1 else 0]
    assert first.losses is not None
    assert first.losses["total"] == pytest.approx(float(total), rel=1e-5)
    for name, value in terms.items():
        assert first.losses[name] == pytest.approx(float(value), rel=1e-5)


def test_pii_step_loss_uses_interleaved_ensemble_targets():
    teacher = tiny_teacher()
    seen = []
    pii = PlugInInversion(teacher, build_objective([parse_prior("cross-entropy")]),
                          config=PIIConfig(iterations=3, plan=(Stage(1, 1),), ensemble=2,
                                           zoom=1, flip=False, color_shift=0, save_every=1))
    targets = torch.tensor([1, 3])
    pii.generate(targets, seed=0, callback=seen.append)
    for before, after in zip(seen, seen[1:]):
        with torch.no_grad():
            ce = F.cross_entropy(teacher.module(before.inputs), targets)
        assert after.losses["cross-entropy"] == pytest.approx(float(ce), rel=1e-5)


def test_adam_betas_reach_the_optimisers():
    teacher = tiny_teacher()
    obj = build_objective([parse_prior("cross-entropy")])

    def pii(betas):
        cfg = PIIConfig(iterations=3, ensemble=1, lr=0.3, betas=betas)
        return PlugInInversion(teacher, obj, config=cfg).generate([0, 1], seed=0).inputs

    assert not torch.allclose(pii((0.9, 0.999)), pii((0.5, 0.9)))

    def di(betas):
        cfg = DIConfig(plan=(Stage(3, 1),), lr=0.3, jitter=0, betas=betas, keep_best=False)
        return DeepInversion(teacher, obj, config=cfg).generate([0, 1], seed=0).inputs

    assert not torch.allclose(di((0.9, 0.999)), di((0.5, 0.9)))


def test_prior_options_recorded():
    assert (0.2 * Competition(student="s", temperature=2, detach=1)).describe() == (
        "0.2*adi(student=s,temperature=2,detach=True)")
    assert (0.01 * BNStats(first_bn_multiplier=4)).describe() == (
        "0.01*bn-stats(first_bn_multiplier=4)")


def test_adi_after_teardown_is_not_attached():
    teacher, student = tiny_teacher(), tiny_teacher(1, "student")
    prior = Competition()
    prior.setup(Setup(teacher=teacher, student=student))
    prior.teardown()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(RuntimeError) as err:
        prior.student_logits(Step(x, teacher.module(x), torch.tensor([0]), teacher))
    assert str(err.value) == "adi is not attached: use objective.attached(Setup(...))"


def test_is_main_process_follows_the_rank(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    for rank, main in ((0, True), (1, False), (3, False)):
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        assert fast_method._is_main_process() is main
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert fast_method._is_main_process() is True
