"""DeepInversion's priors and options pinned exactly (group h8): ``adi``'s loss against a
hand computation and its student handling, ``bn-stats``' per-layer terms, hooks and
errors, the channel moments' backward, and ``configure``'s resolution of the options.
"""

from __future__ import annotations

import math

import pytest
import torch

import invkit
from torch import nn

from invkit.errors import InvkitError
from invkit.methods import Context
from invkit.objective import Setup, Step
from invkit.specs import Stage, Teacher, TeacherMeta
from invkit_plugins.deepinversion import options as di_options
from invkit_plugins.deepinversion.adaptive import (
    CLAMP, Competition, competition_loss, student_view,
)
from invkit_plugins.deepinversion.bn_stats import BNStats, Segments, bn_input_stats
from invkit_plugins.deepinversion.method import DIConfig
from invkit_plugins.deepinversion.moments import ChannelMoments
from invkit_plugins.deepinversion.options import DIOptions, configure
from invkit_plugins.deepinversion.presets import SETTINGS
from tests.di_tiny import tiny_teacher

# ------------------------------------------------------------------ adi


def _js_reference(s, t, temperature):
    def soft(v):
        e = [math.exp(a / temperature) for a in v]
        return [a / sum(e) for a in e]

    def clamp(v):
        return min(max(v, 0.01), 0.99)

    total = 0.0
    for srow, trow in zip(s, t):
        p, q = soft(srow), soft(trow)
        m = [clamp(0.5 * (a + b)) for a, b in zip(p, q)]
        p, q = [clamp(a) for a in p], [clamp(a) for a in q]
        total += sum(0.5 * mi * (math.log(mi) - math.log(pi)) +
                     0.5 * mi * (math.log(mi) - math.log(qi)) for mi, pi, qi in zip(m, p, q))
    return 1.0 - min(max(total / len(s), 0.0), 1.0)


def test_competition_loss_hand_computed():
    s = [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]
    t = [[-1.0, 1.0, 0.0], [4.0, 0.0, 0.0]]
    for temperature in (3.0, 1.0):
        got = competition_loss(torch.tensor(s), torch.tensor(t), temperature)
        assert float(got) == pytest.approx(_js_reference(s, t, temperature), rel=1e-5)
    assert float(competition_loss(torch.tensor(s), torch.tensor(t))) == pytest.approx(
        _js_reference(s, t, 3.0), rel=1e-5)
    # Total disagreement: JS above 1 is clamped, the loss is 0 (not negative).
    far = competition_loss(torch.tensor([[30.0, -30.0]]), torch.tensor([[-30.0, 30.0]]), 1.0)
    assert float(far) == 0.0
    half = torch.tensor([[2.0, -2.0]], dtype=torch.float16)
    assert competition_loss(half, half).dtype == torch.float32
    assert CLAMP == (0.01, 0.99)


def _meta(size=16, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3)):
    return TeacherMeta("s", size, 4, mean=mean, std=std)


def test_student_view_cases():
    teacher = tiny_teacher()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    step = Step(x, None, torch.tensor([0, 1]), teacher)
    same = Teacher(module=nn.Identity(), meta=_meta(), name="same")
    assert student_view(step, same) is x
    other_stats = Teacher(module=nn.Identity(), meta=_meta(mean=(0.5,) * 3), name="o")
    want = other_stats.prepare(teacher.denormalize(x))
    assert torch.allclose(student_view(step, other_stats), want)
    bigger = Teacher(module=nn.Identity(), meta=_meta(size=32), name="b")
    out = student_view(step, bigger)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, bigger.prepare(teacher.denormalize(x)))


def test_competition_setup_errors_and_restores_the_student(monkeypatch):
    teacher = tiny_teacher()
    prior = Competition()
    with pytest.raises(InvkitError) as err:
        prior.setup(Setup(teacher=teacher))
    assert str(err.value) == (
        "prior adi needs a student: give --student SPEC or --prior adi,student=SPEC (any "
        "teacher spec, see 'invkit teachers list')")
    student = tiny_teacher(1, "student")
    student.module.train()
    params = list(student.module.parameters())
    params[0].requires_grad_(False)
    flags = [p.requires_grad for p in params]
    prior.setup(Setup(teacher=teacher, student=student))
    assert prior.student is student and student.module.training is False
    assert not any(p.requires_grad for p in params)
    prior.teardown()
    assert [p.requires_grad for p in params] == flags
    assert prior.student is None and prior._restore == []
    loads = []

    def load(spec, device=None):
        loads.append((spec, device))
        return tiny_teacher(1, spec)

    monkeypatch.setattr(invkit, "load_teacher", load)
    by_spec = Competition(student="tiny-bn-verifier")
    by_spec.setup(Setup(teacher=teacher))
    assert by_spec.student.name == "tiny-bn-verifier"
    assert loads == [("tiny-bn-verifier", "cpu")]
    by_spec.teardown()
    empty = Teacher(module=nn.Identity(), meta=teacher.meta, name="no-params")
    by_spec.setup(Setup(teacher=empty))
    assert loads[-1] == ("tiny-bn-verifier", "cpu")
    by_spec.teardown()
    given = Competition(student="tiny-bn-verifier")
    given.setup(Setup(teacher=teacher, student=student))
    assert given.student is student   # the run's student wins over the option
    given.teardown()


def test_competition_logits_cache_detach_and_value():
    teacher, student = tiny_teacher(), tiny_teacher(1, "student")
    prior = Competition(temperature=2.0)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1),
                    requires_grad=True)
    step = Step(x, teacher.module(x), torch.tensor([0, 1]), teacher)
    with pytest.raises(RuntimeError) as err:
        prior.student_logits(step)
    assert str(err.value) == "adi is not attached: use objective.attached(Setup(...))"
    prior.setup(Setup(teacher=teacher, student=student))
    logits = prior.student_logits(step)
    assert step.extras["student_logits"] is logits
    assert torch.allclose(logits, student.module(x))
    assert float(prior(step).detach()) == pytest.approx(
        float(competition_loss(student.module(x), step.logits, 2.0).detach()), rel=1e-6)
    cached = Step(x, step.logits, step.targets, teacher, extras={"student_logits":
                                                                 torch.zeros(2, 4)})
    assert torch.equal(prior.student_logits(cached), torch.zeros(2, 4))
    assert logits.requires_grad
    detached = Competition(detach=True)
    detached.setup(Setup(teacher=teacher, student=student))
    out = detached.student_logits(Step(x, step.logits, step.targets, teacher))
    assert not out.requires_grad
    assert (detached.temperature, detached.detach, detached.student_spec) == (3.0, True, "")
    prior.teardown()
    detached.teardown()


# ------------------------------------------------------------------ bn-stats


def test_bn_input_stats_dtypes_and_values():
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean, var = bn_input_stats(x)
    ref_var, ref_mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    assert mean.dtype == torch.float64 and torch.allclose(mean, ref_mean)
    assert torch.allclose(var, ref_var)
    mixed = bn_input_stats(x, x.float())
    assert mixed[0].dtype == torch.float32 and mixed[0].shape == (4,)
    assert bn_input_stats(x.half())[0].dtype == torch.float32


def test_channel_moments_backward_matches_autograd():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 2, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    wm = torch.randn(5, generator=g, dtype=torch.float64)
    wv = torch.randn(5, generator=g, dtype=torch.float64)

    def reference(*xs):
        pairs = [torch.var_mean(x, dim=(0, 2, 3), correction=0) for x in xs]
        return torch.cat([m for _, m in pairs]), torch.cat([v for v, _ in pairs])

    for use_mean, use_var in ((True, True), (True, False), (False, True)):
        grads = []
        for fn in (ChannelMoments.apply, reference):
            mean, var = fn(a, b)
            loss = (mean * wm).sum() * use_mean + (var * wv).sum() * use_var
            grads.append(torch.autograd.grad(loss, (a, b)))
        for got, want in zip(*grads):
            assert torch.allclose(got, want, atol=1e-10)
    x = torch.arange(8.0).view(2, 1, 2, 2)
    mean, var = ChannelMoments.apply(x, 2 * x)
    assert mean.tolist() == [3.5, 7.0] and var.tolist() == [5.25, 21.0]
    flat = torch.full((1, 1, 2, 2), 3.0)
    assert ChannelMoments.apply(flat)[1].tolist() == [0.0]   # never negative


def test_segments_norms():
    seg = Segments([2, 3])
    assert torch.allclose(seg.norms(torch.tensor([3.0, 4.0, 1.0, 0.0, 2.0])),
                          torch.tensor([5.0, math.sqrt(5.0)]))
    batched = torch.tensor([[3.0, 4.0, 1.0, 2.0, 2.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(seg.norms(batched), torch.tensor([[5.0, 3.0], [1.0, 0.0]]))
    assert seg.sizes == (2, 3)
    assert torch.allclose(Segments([1, 1, 1]).norms(torch.tensor([-2.0, 3.0, 0.0])),
                          torch.tensor([2.0, 3.0, 0.0]))


def _bn_reference(teacher, x):
    inputs = []
    layers = [m for m in teacher.module.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [m.register_forward_hook(lambda m, i, o: inputs.append(i[0])) for m in layers]
    teacher.module(x)
    for h in hooks:
        h.remove()
    out = []
    for layer, inp in zip(layers, inputs):
        var, mean = torch.var_mean(inp, dim=(0, 2, 3), correction=0)
        out.append(float(torch.linalg.vector_norm(mean.detach() - layer.running_mean)
                         + torch.linalg.vector_norm(var.detach() - layer.running_var)))
    return out


def test_bn_stats_terms_weighting_and_hooks():
    teacher = tiny_teacher()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    want = _bn_reference(teacher, x)
    prior = BNStats(first_bn_multiplier=3)
    assert prior.first_bn_multiplier == 3.0
    with pytest.raises(RuntimeError) as err:
        prior.layer_losses()
    assert str(err.value) == "bn-stats is not attached: use objective.attached(Setup(teacher))"
    prior.setup(Setup(teacher=teacher))
    with pytest.raises(RuntimeError) as err:
        prior.layer_losses()
    assert str(err.value) == "bn-stats: the teacher has not run since setup"
    logits = teacher.module(x)
    terms = prior.layer_losses()
    assert [float(t) for t in terms] == pytest.approx(want, rel=1e-5)
    assert prior.layer_losses() is not terms and [float(t) for t in prior.layer_losses()] \
        == [float(t) for t in terms]
    step = Step(x, logits, torch.zeros(3, dtype=torch.long), teacher)
    assert float(prior(step)) == pytest.approx(3 * want[0] + want[1], rel=1e-5)
    y = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    teacher.module(y)
    assert [float(t) for t in prior.layer_losses()] == pytest.approx(
        _bn_reference(teacher, y), rel=1e-5)
    prior.setup(Setup(teacher=teacher))      # a second setup does not double the hooks
    assert len(prior._handles) == 2
    prior.teardown()
    assert prior._handles == [] and prior._layers == [] and prior._terms is None
    teacher.module(x)
    assert prior._inputs == []
    assert BNStats().first_bn_multiplier == 10.0


def test_bn_stats_skipped_layers_and_missing_batchnorm():
    first = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    skipped = nn.BatchNorm2d(5)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.skipped, self.first = skipped, first

        def forward(self, x):
            return self.first(x).mean(dim=(2, 3))

    meta = TeacherMeta("n", 4, 2)
    teacher = Teacher(module=Net().eval(), meta=meta, name="net")
    prior = BNStats(first_bn_multiplier=2.0)
    prior.setup(Setup(teacher=teacher))
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    logits = teacher.module(x)
    terms = prior.layer_losses()
    assert len(terms) == 1
    step = Step(x, logits, torch.zeros(2, dtype=torch.long), teacher)
    assert float(prior(step)) == pytest.approx(2.0 * float(terms[0]))
    prior.teardown()
    plain = Teacher(module=nn.Sequential(nn.Conv2d(3, 2, 1)), meta=meta, name="plain")
    with pytest.raises(InvkitError) as err:
        BNStats().setup(Setup(teacher=plain))
    assert str(err.value) == (
        "prior bn-stats needs a teacher with BatchNorm2d layers; teacher 'plain' has none "
        "(drop the term with --r-feature 0)")


# ------------------------------------------------------------------ options / presets


def test_settings_are_the_published_ones():
    assert {k: (s.id, s.plan, s.betas, s.clip) for k, s in SETTINGS.items()} == {
        0: (0, (Stage(2000, 2), Stage(1000, 1)), (0.5, 0.9), True),
        1: (1, (Stage(2000, 1),), (0.5, 0.9), True),
        2: (2, (Stage(20000, 1),), (0.9, 0.999), False)}


def _context(size=16, grey=False, **kw):
    return Context(TeacherMeta("t", size, 4, grayscale=grey), **kw)


def test_configure_resolves_options(monkeypatch):
    calls = []
    monkeypatch.setattr(di_options, "check_memory", lambda *a: calls.append(a))
    monkeypatch.setattr(di_options, "estimate_inversion_bytes", lambda *a: a)
    config = configure(DIOptions(), _context(precision="bf16", checkpoint_every=7,
                                             batch_size=5, device="meta"))
    assert config == DIConfig(plan=SETTINGS[0].plan, betas=(0.5, 0.9), clip=True,
                              grayscale=False, amp="bf16", save_every=7)
    assert calls == [((5, 3, 16), "a batch of 5 images at 16 px", "meta")]
    config = configure(DIOptions(setting_id=2, iterations=40, lr=0.3, lr_schedule="constant",
                                 flip=False, jitter=3, resolution=8, compile=True,
                                 channels_last=False, grayscale=True), _context())
    assert config == DIConfig(plan=SETTINGS[2].plan, iterations=40, lr=0.3,
                              lr_schedule="constant", flip=False, jitter=3, resolution=8,
                              compile=True, channels_last=False, betas=(0.9, 0.999),
                              clip=False, grayscale=True)
    assert calls[-1] == ((1, 3, 8), "a batch of 1 images at 8 px", "cpu")
    on = configure(DIOptions(channels_last=True), _context())
    assert on.channels_last is None    # the default: recorded as unset
    assert configure(DIOptions(), _context(grey=True)).grayscale is True
    assert configure(DIOptions(grayscale=False), _context(grey=True)).grayscale is False
    planned = configure(DIOptions(setting_id=1, plan="single-stage,iterations=5"),
                        _context())
    assert planned.plan == (Stage(5, 1),) and planned.betas == (0.5, 0.9)


def test_configure_refusals_exact():
    with pytest.raises(InvkitError) as err:
        configure(DIOptions(resolution=9, plan="deepinversion-setting-0"), _context())
    assert str(err.value) == (
        "resolution 9 is not divisible by the plan's downsample factor 2: choose a multiple"
        " of it")
    with pytest.raises(InvkitError) as err:
        configure(DIOptions(), _context(size=15))
    assert str(err.value) == (
        "resolution 15 is not divisible by the plan's downsample factor 2: choose a multiple"
        " of it")
    with pytest.raises(InvkitError) as err:
        configure(DIOptions(lr_schedule="single-stage"), _context())
    assert str(err.value).startswith(
        "schedule 'single-stage' is a plan schedule, not a lr one")
