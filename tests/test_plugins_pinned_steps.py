"""What the first optimisation steps compute, pinned against an independent evaluation
(group h8): the seeded start, the augmentation stream, the ensemble's target order, Adam's
betas, the objective's terms and the priors' recorded options.
"""

from __future__ import annotations

import copy
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
from invkit_plugins.generative.method import _Counter
from invkit_plugins.generative.network import latents
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


# ------------------------------------------------------------------ fast


def _fast_objective():
    return build_objective([parse_prior(p) for p in ("cross-entropy", "tv-l2:1e-3")])


def test_fast_first_training_step_is_seeded_by_generator_seed():
    from invkit_plugins.generative.method import FastGenerator, _augment
    from invkit_plugins.generative.network import ConditionalGenerator
    from invkit_plugins.generative.options import FastConfig

    teacher = tiny_teacher()
    config = FastConfig(train_steps=1, train_bs=4, z_dim=4, width=8, jitter=2, flip=True,
                        generator_seed=2, save_every=1)   # seed 2: shift and flip
    seen = []
    fg = FastGenerator(teacher, _fast_objective(), config=config)
    fg.train(callback=seen.append)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        net = ConditionalGenerator(fg.spec).train()
    draw = torch.Generator().manual_seed(2)
    z = torch.randn(4, 4, generator=draw)
    y = torch.randint(4, (4,), generator=draw)
    view = _augment(fg._inputs(net(z, y)), 2, True, random.Random(2))
    reference = _fast_objective()
    with reference.attached(Setup(teacher=teacher)):
        total, terms = reference(Step(view, teacher.module(view), y, teacher))
    assert len(seen) == 1 and seen[0].losses["total"] == pytest.approx(float(total.detach()),
                                                                       rel=1e-5)


def test_fast_k_fine_tuning_uses_inner_lr(tmp_path):
    from invkit_plugins.generative.method import FastGenerator
    from invkit_plugins.generative.options import FastConfig

    teacher = tiny_teacher()
    base = dict(train_steps=2, train_bs=4, z_dim=4, width=8)
    path = tmp_path / "g.safetensors"
    FastGenerator(teacher, _fast_objective(),
                  config=FastConfig(save_generator=str(path), **base)).train()

    def sample(lr, inner_lr):
        cfg = FastConfig(generator=str(path), steps_per_batch=2, lr=lr, inner_lr=inner_lr,
                         z_dim=4, width=8)
        return FastGenerator(teacher, _fast_objective(), config=cfg).generate(
            [0, 1], seed=1).inputs

    a = sample(1e-3, 0.05)
    assert torch.equal(a, sample(0.5, 0.05))
    assert not torch.allclose(a, sample(1e-3, 0.2))
    # The batch's K steps: fresh Adam at inner_lr, augmentations drawn from the batch seed.
    cfg = FastConfig(generator=str(path), steps_per_batch=2, inner_lr=0.05, z_dim=4,
                     width=8, jitter=2, flip=True)
    fg = FastGenerator(teacher, _fast_objective(), config=cfg)
    got = fg.generate([0, 1], seed=2).inputs
    net = copy.deepcopy(fg.net).train()
    z, targets = latents(2, 4, 2), torch.tensor([0, 1])
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05, betas=(0.5, 0.999))
    rng = random.Random(2)
    counter = _Counter(None, 2, stages=1, stage=1, label="", every=1, stage_iterations=2)
    with fg._attached():
        for _ in range(2):
            fg._step(net, optimizer, z, targets, rng, counter)
        want, _ = fg._sample(net, z, targets)
    assert torch.allclose(got, want, atol=1e-6)


def test_feature_diversity_reads_the_last_linear_layer():
    from torch import nn

    from invkit.specs import Teacher
    from invkit_plugins.generative.method import feature_diversity

    meta = tiny_teacher().meta
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5), nn.Tanh(),
                               nn.Linear(5, 4)).eval()
    teacher = Teacher(module=module, meta=meta, name="mlp")
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = module[2](module[1](module[0](teacher.prepare(images))))
    want = float(torch.dist(feats[0], feats[1]))
    assert feature_diversity(teacher, images, torch.tensor([1, 1])) == pytest.approx(
        want, rel=1e-5)


def test_competition_clamps_confident_probabilities():
    from invkit_plugins.deepinversion.adaptive import competition_loss

    # Softmax at T=1 puts p and q outside [0.01, 0.99]: each is clamped before the logs.
    s, t = torch.tensor([[6.0, 0.0, -6.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    p = F.softmax(s, dim=1)
    q = F.softmax(t, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    pc, qc = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    js = 0.5 * (m * (m.log() - pc.log())).sum() + 0.5 * (m * (m.log() - qc.log())).sum()
    assert 0 < float(js) < 1
    assert float(competition_loss(s, t, 1.0)) == pytest.approx(1 - float(js), rel=1e-6)
    assert float(competition_loss(t, s, 1.0)) == pytest.approx(1 - float(js), rel=1e-6)


def test_channel_variance_is_never_negative():
    from invkit_plugins.deepinversion.moments import ChannelMoments

    # E[x^2] - mean^2 rounds below zero for this constant input in float32.
    mean, var = ChannelMoments.apply(torch.full((1, 1, 3, 3), 0.1))
    assert var.tolist() == [0.0]
    mean, var = ChannelMoments.apply(torch.full((1, 1, 5, 5), 3.3))
    assert var.tolist() == [0.0]


def test_bn_stats_releases_the_layer_inputs_once_computed():
    teacher = tiny_teacher()
    prior = BNStats()
    prior.setup(Setup(teacher=teacher))
    teacher.module(torch.randn(2, 3, 16, 16))
    assert [x is not None for x in prior._inputs] == [True, True]
    prior.layer_losses()
    assert prior._inputs == [None, None]
    prior.teardown()


def test_fast_plain_training_is_adam_on_fresh_gradients_and_its_rate_counted():
    from invkit_plugins.generative.method import BETAS, FastGenerator
    from invkit_plugins.generative.network import ConditionalGenerator
    from invkit_plugins.generative.options import FastConfig

    teacher = tiny_teacher()
    config = FastConfig(train_steps=3, train_bs=4, lr=0.05, z_dim=4, width=8, jitter=1,
                        flip=True, generator_seed=1)
    fg = FastGenerator(teacher, _fast_objective(), config=config)
    trained = fg.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        net = ConditionalGenerator(fg.spec).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05, betas=BETAS)
    draw, rng = torch.Generator().manual_seed(1), random.Random(1)
    with fg._attached():
        for _ in range(3):
            z, y = fg._training_batch(draw)
            total, _, _ = fg._loss(net, z, y, rng)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    for a, b in zip(trained.parameters(), net.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    result = fg.generate([0, 1], seed=0)
    assert result.its_per_s == pytest.approx(1 / sum(result.timings))
    k2 = FastGenerator(teacher, _fast_objective(), config=FastConfig(
        train_steps=0, steps_per_batch=2, z_dim=4, width=8)).generate([0], seed=0)
    assert k2.its_per_s == pytest.approx(2 / sum(k2.timings))


def test_di_and_pii_steps_use_fresh_gradients():
    """Two steps on a flat loss landscape: the second step's gradient is its own only."""
    teacher = tiny_teacher()
    obj = build_objective([parse_prior("l2:1")])
    seen = []
    cfg = DIConfig(plan=(Stage(2, 1),), lr=0.1, jitter=0, flip=False, clip=False,
                   lr_schedule="constant", save_every=1, keep_best=False)
    DeepInversion(teacher, obj, config=cfg).generate([0], seed=0, callback=seen.append)
    x = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.1, betas=(0.5, 0.9), eps=1e-8)
    for _ in range(2):
        optimizer.zero_grad()
        torch.linalg.vector_norm(x.flatten(1), dim=1).mean().backward()
        optimizer.step()
    assert torch.allclose(seen[-1].inputs, x.detach(), atol=1e-6)
    its = DeepInversion(teacher, obj, config=cfg).generate([0], seed=0)
    assert its.its_per_s == pytest.approx(2 / sum(its.timings))


def test_pii_steps_are_adam_on_the_clipped_image():
    teacher = tiny_teacher()
    obj = build_objective([parse_prior("l2:1")])
    seen = []
    cfg = PIIConfig(plan=(Stage(3, 1),), iterations=None, lr=0.2, ensemble=1, zoom=1,
                    flip=False, color_shift=0, lr_schedule="constant", save_every=1)
    PlugInInversion(teacher, obj, config=cfg).generate([0], seed=0, callback=seen.append)
    gen = torch.Generator().manual_seed(0)
    x = (0.5 + 0.2 * torch.randn(1, 3, 16, 16, generator=gen)).clamp(0, 1).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.2, betas=(0.9, 0.999))
    for checkpoint in seen:
        optimizer.zero_grad()
        view = teacher.normalize(x)
        torch.linalg.vector_norm(view.flatten(1), dim=1).mean().backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        assert torch.allclose(checkpoint.inputs, teacher.normalize(x.detach()), atol=1e-5)
    result = PlugInInversion(teacher, obj, config=cfg).generate([0], seed=0)
    assert result.its_per_s == pytest.approx(3 / sum(result.timings))
