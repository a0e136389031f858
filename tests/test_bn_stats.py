"""The bn-stats and adi priors against direct computations of the spec's formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from invkit.errors import InvkitError
from invkit.objective import Setup, Step, build_objective, parse_prior
from invkit.registry import registry
from invkit.specs import Teacher, TeacherMeta
from invkit_plugins.deepinversion.adaptive import Competition, competition_loss
from invkit_plugins.deepinversion.bn_stats import BNStats
from tests.di_tiny import tiny_teacher


def bn_inputs(net: nn.Sequential, x: torch.Tensor) -> list[tuple[torch.Tensor, nn.BatchNorm2d]]:
    """Run the Sequential layer by layer, collecting each BatchNorm2d's input."""
    found = []
    for layer in net:
        if isinstance(layer, nn.BatchNorm2d):
            found.append((x, layer))
        x = layer(x)
    return found


def direct_layer_term(x: torch.Tensor, bn: nn.BatchNorm2d) -> float:
    # Spec: per-channel mean and *biased* variance over batch and space; plain L2 norms.
    c = x.shape[1]
    flat = x.detach().transpose(0, 1).reshape(c, -1).double()
    mean = flat.mean(1)
    var = ((flat - mean[:, None]) ** 2).mean(1)
    return (math.sqrt(((mean - bn.running_mean.double()) ** 2).sum())
            + math.sqrt(((var - bn.running_var.double()) ** 2).sum()))


def run_prior(prior, teacher, x, targets=None):
    targets = targets if targets is not None else torch.zeros(x.shape[0], dtype=torch.long)
    objective = build_objective([]) + prior
    with objective.attached(Setup(teacher)):
        logits = teacher.module(x)
        return prior(Step(x, logits, targets, teacher))


@pytest.mark.parametrize("multiplier", [1.0, 10.0])
def test_bn_stats_matches_spec_formula(multiplier):
    teacher = tiny_teacher()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.7 + 0.3
    terms = [direct_layer_term(xi, bn) for xi, bn in bn_inputs(teacher.module, x)]
    assert len(terms) == 2 and terms[0] > 0 and terms[1] > 0
    expected = multiplier * terms[0] + terms[1]
    got = run_prior(BNStats(first_bn_multiplier=multiplier), teacher, x)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_first_bn_multiplier_weights_only_the_first_layer_in_module_order():
    teacher = tiny_teacher()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    first = direct_layer_term(*bn_inputs(teacher.module, x)[0])
    one = run_prior(BNStats(first_bn_multiplier=1.0), teacher, x).item()
    four = run_prior(BNStats(first_bn_multiplier=4.0), teacher, x).item()
    assert four - one == pytest.approx(3 * first, rel=1e-4)


def test_bn_stats_hooks_removed_after_run_and_on_error():
    teacher = tiny_teacher()
    bns = [m for m in teacher.module.modules() if isinstance(m, nn.BatchNorm2d)]
    prior = BNStats()
    objective = build_objective([]) + prior
    with pytest.raises(RuntimeError, match="boom"):
        with objective.attached(Setup(teacher)):
            assert all(len(m._forward_hooks) == 1 for m in bns)
            raise RuntimeError("boom")
    assert all(len(m._forward_hooks) == 0 for m in bns)


def test_bn_stats_refuses_a_teacher_without_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    teacher = Teacher(net, TeacherMeta("nobn", 8, 2), "nobn")
    with pytest.raises(InvkitError, match="bn-stats needs a teacher with BatchNorm2d"):
        with (build_objective([]) + BNStats()).attached(Setup(teacher)):
            pass


def test_bn_stats_float32_under_bf16_autocast():
    teacher = tiny_teacher()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    prior = BNStats(first_bn_multiplier=2.0)
    with (build_objective([]) + prior).attached(Setup(teacher)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = teacher.module(x)
            loss = prior(Step(x, logits, torch.zeros(4, dtype=torch.long), teacher))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_priors_registered_with_options():
    priors = registry("prior")
    bn = priors.get("bn-stats")
    assert bn.provider == "deepinversion"
    assert [o.name for o in bn.options] == ["first_bn_multiplier"]
    assert {o.name for o in priors.get("adi").options} == {"student", "temperature", "detach"}
    built = build_objective([parse_prior("bn-stats:0.05,first_bn_multiplier=3")])
    assert built.describe() == "0.05*bn-stats(first_bn_multiplier=3)"


# ----------------------------------------------------------------------------- adi


def direct_competition(s_logits, t_logits, temperature=3.0) -> float:
    """1 - clamp(JS, 0, 1) written out element by element from the spec."""
    total = 0.0
    n, k = s_logits.shape
    for b in range(n):
        ps = torch.softmax(s_logits[b].double() / temperature, 0).tolist()
        qs = torch.softmax(t_logits[b].double() / temperature, 0).tolist()
        for p, q in zip(ps, qs):
            m = min(max((p + q) / 2, 0.01), 0.99)
            p, q = min(max(p, 0.01), 0.99), min(max(q, 0.01), 0.99)
            total += 0.5 * m * (math.log(m) - math.log(p)) + 0.5 * m * (math.log(m) - math.log(q))
    js = total / n
    return 1 - min(max(js, 0.0), 1.0)


@pytest.mark.parametrize("scale", [0.5, 4.0, 40.0])
def test_competition_matches_clamped_js_formula(scale):
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(6, 5, generator=gen) * scale
    t = torch.randn(6, 5, generator=gen) * scale
    got = competition_loss(s, t, temperature=3.0).item()
    assert got == pytest.approx(direct_competition(s, t), abs=1e-5)
    assert 0.0 <= got <= 1.0


def test_competition_is_one_when_teacher_and_student_agree():
    logits = torch.randn(3, 4)
    assert competition_loss(logits, logits).item() == pytest.approx(1.0)


def test_competition_prior_runs_the_student_or_uses_extras():
    teacher, student = tiny_teacher(0), tiny_teacher(1, name="student")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4), requires_grad=True)
    prior = Competition(temperature=3.0)
    with (build_objective([]) + prior).attached(Setup(teacher, student)):
        t_logits = teacher.module(x)
        step = Step(x, t_logits, torch.zeros(4, dtype=torch.long), teacher)
        loss = prior(step)
        assert "student_logits" in step.extras  # it ran the student itself
        assert all(not p.requires_grad for p in student.module.parameters())
        expected = direct_competition(student.module(x).detach(), t_logits.detach())
        assert loss.item() == pytest.approx(expected, abs=1e-5)
        loss.backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        given = torch.zeros(4, 4)
        step2 = Step(x, t_logits.detach(), torch.zeros(4, dtype=torch.long), teacher,
                     extras={"student_logits": given})
        assert prior(step2).item() == pytest.approx(
            direct_competition(given, t_logits.detach()), abs=1e-5)
    assert all(p.requires_grad for p in student.module.parameters())  # restored


def test_competition_without_student_is_a_one_line_error():
    with pytest.raises(InvkitError, match="adi needs a student"):
        with (build_objective([]) + Competition()).attached(Setup(tiny_teacher())):
            pass


def test_bn_input_stats_gradients_match_autograd_of_the_definition():
    from invkit_plugins.deepinversion.bn_stats import bn_input_stats

    x = (torch.randn(3, 4, 5, 6, dtype=torch.float64) * 2 + 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: bn_input_stats(t), (x,))
    # Only one of the outputs used (the other's gradient is None in backward).
    assert torch.autograd.gradcheck(lambda t: bn_input_stats(t)[1].square().sum(), (x,))
    # float32, against torch.var_mean: values and the gradient of a loss like bn-stats'.
    y = (torch.randn(8, 16, 7, 7) * 3 + 2).requires_grad_()
    mean, var = bn_input_stats(y)
    (torch.linalg.vector_norm(mean - 1) + torch.linalg.vector_norm(var - 4)).backward()
    ours = y.grad.clone()
    y.grad = None
    ref_var, ref_mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
    (torch.linalg.vector_norm(ref_mean - 1) + torch.linalg.vector_norm(ref_var - 4)).backward()
    assert torch.allclose(mean, ref_mean, atol=1e-5) and torch.allclose(var, ref_var, rtol=1e-5)
    assert torch.allclose(ours, y.grad, rtol=1e-4, atol=1e-7)
    assert mean.dtype == var.dtype == torch.float32


def test_bn_stats_lifecycle_messages_and_repeated_setup():
    teacher = tiny_teacher()
    bns = [m for m in teacher.module.modules() if isinstance(m, nn.BatchNorm2d)]
    prior = BNStats()
    with pytest.raises(RuntimeError) as error:
        prior.layer_losses()
    assert str(error.value) == "bn-stats is not attached: use objective.attached(Setup(teacher))"
    prior.setup(Setup(teacher))
    prior.setup(Setup(teacher))          # a second setup replaces the hooks, never adds
    assert all(len(m._forward_hooks) == 1 for m in bns)
    with pytest.raises(RuntimeError) as error:
        prior.layer_losses()
    assert str(error.value) == "bn-stats: the teacher has not run since setup"
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    teacher.module(x)
    assert len(prior.layer_losses()) == len(bns)
    prior.teardown()
    assert all(len(m._forward_hooks) == 0 for m in bns)


def test_bn_stats_refusal_is_exact():
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(InvkitError) as error:
        BNStats().setup(Setup(Teacher(net, TeacherMeta("nobn", 8, 2), "nobn")))
    assert str(error.value) == ("prior bn-stats needs a teacher with BatchNorm2d layers; teacher "
                                "'nobn' has none (drop the term with --r-feature 0)")


def test_bn_stats_default_first_layer_multiplier_is_10():
    assert BNStats().first_bn_multiplier == 10.0
    assert BNStats().describe() == "bn-stats(first_bn_multiplier=10)"


class _WithSkippedHead(nn.Module):
    """A BatchNorm layer the eval-mode forward never runs (as GoogLeNet's auxiliary heads)."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5))
        self.body = tiny_teacher().module

    def forward(self, x):
        return self.body(x)


def test_layers_the_forward_skips_have_no_term():
    teacher = tiny_teacher()
    skipping = Teacher(_WithSkippedHead().eval(), teacher.meta, "skips")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    terms = [direct_layer_term(xi, bn) for xi, bn in bn_inputs(teacher.module, x)]
    prior = BNStats(first_bn_multiplier=3.0)
    got = run_prior(prior, skipping, x)
    # The first layer that ran gets the multiplier; the skipped one neither term nor error.
    assert got.item() == pytest.approx(3 * terms[0] + terms[1], rel=1e-5)


def test_terms_are_computed_once_per_forward_and_inputs_released():
    import gc
    import weakref

    teacher = tiny_teacher()
    prior = BNStats()
    seen = []
    first_bn = next(m for m in teacher.module.modules() if isinstance(m, nn.BatchNorm2d))
    handle = first_bn.register_forward_hook(lambda m, i, o: seen.append(weakref.ref(i[0])))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)).requires_grad_()
    with prior.objective().attached(Setup(teacher)):
        logits = teacher.module(x)
        step = Step(x, logits, torch.zeros(2, dtype=torch.long), teacher)
        loss = prior(step)
        assert prior(step) is not loss and prior(step).item() == loss.item()
        assert [t is u for t, u in zip(prior.layer_losses(), prior.layer_losses())] == [True] * 2
        loss.backward()
        del logits, loss, step
        gc.collect()
        # Between steps nothing holds the activations: not the prior, not the graph.
        assert seen[0]() is None
        teacher.module(x)             # the next forward: terms recomputed from its inputs
        assert prior.layer_losses()[0].item() != 0
    handle.remove()


def test_channel_moments_of_several_tensors_at_once():
    from invkit_plugins.deepinversion.moments import ChannelMoments

    g = torch.Generator().manual_seed(5)
    a = (torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64) + 1).requires_grad_()
    b = (torch.randn(3, 3, 2, 2, generator=g, dtype=torch.float64) * 2).requires_grad_()
    mean, var = ChannelMoments.apply(a, b)
    ref = [torch.var_mean(t, dim=(0, 2, 3), correction=0) for t in (a, b)]
    assert torch.allclose(mean, torch.cat([m for _, m in ref]))
    assert torch.allclose(var, torch.cat([v for v, _ in ref]))
    assert torch.autograd.gradcheck(lambda s, t: ChannelMoments.apply(s, t), (a, b))


def test_segment_norms_equal_each_segments_vector_norm_exactly():
    from invkit_plugins.deepinversion.bn_stats import Segments

    sizes = [3, 64, 17, 256, 1, 128]
    values = torch.randn(2, sum(sizes), generator=torch.Generator().manual_seed(6)) * 5
    got = Segments(sizes).norms(values)
    expected = torch.stack([torch.stack([torch.linalg.vector_norm(s) for s in row.split(sizes)])
                            for row in values])
    assert got.shape == (2, len(sizes))
    assert torch.equal(got, expected)  # bit for bit: the pinned images depend on it
