"""Priors that add and scale, --prior parsing, merging with defaults, building objectives."""

from __future__ import annotations

import typing

import pytest
import torch

from invkit.errors import InvkitError
from invkit.objective import (
    Objective, Prior, PriorRequest, Setup, Step, build_objective, merge_requests, parse_prior,
    set_weight,
)
from invkit.priors import CrossEntropy, L2Norm, TotalVariation
from invkit.specs import Teacher, TeacherMeta


def make_step(inputs, logits=None, targets=None):
    logits = torch.randn(inputs.shape[0], 4) if logits is None else logits
    targets = torch.zeros(inputs.shape[0], dtype=torch.long) if targets is None else targets
    teacher = Teacher(torch.nn.Identity(), TeacherMeta("id", 4, 4), "id")
    return Step(inputs=inputs, logits=logits, targets=targets, teacher=teacher)


@pytest.mark.parametrize("text,expected", [
    ("tv-l2", PriorRequest("tv-l2")),
    ("tv-l2:1e-4", PriorRequest("tv-l2", 1e-4)),
    ("bn-stats:0.01,first_bn_multiplier=10",
     PriorRequest("bn-stats", 0.01, (("first_bn_multiplier", "10"),))),
    ("bn-stats,first_bn_multiplier=2", PriorRequest("bn-stats", None,
                                                    (("first_bn_multiplier", "2"),))),
    (" l2:0 ", PriorRequest("l2", 0.0)),
])
def test_parse_prior_good(text, expected):
    assert parse_prior(text) == expected


@pytest.mark.parametrize("text,fragment", [
    ("", "missing name"),
    (":0.1", "missing name"),
    ("tv-l2:abc", "weight 'abc' is not a number"),
    ("tv-l2:nan", "must be finite"),
    ("bn-stats:1,first_bn_multiplier", "'first_bn_multiplier' is not key=value"),
    ("bn-stats:1,=3", "is not key=value"),
])
def test_parse_prior_bad_is_one_clear_line(text, fragment):
    with pytest.raises(InvkitError) as info:
        parse_prior(text)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert "NAME[:WEIGHT][,key=value...]" in message


def test_build_objective_uses_default_weights_and_adds_repeats():
    objective = build_objective([parse_prior("cross-entropy"), parse_prior("tv-l2"),
                                 parse_prior("tv-l2:1e-4"), parse_prior("l2:0.5")])
    assert objective.describe() == "1*cross-entropy + 0.0002*tv-l2 + 0.5*l2"


def test_build_objective_validates_names_and_options():
    with pytest.raises(InvkitError, match="unknown prior 'tv'.*did you mean: tv-l"):
        build_objective([parse_prior("tv:1")])
    with pytest.raises(InvkitError, match="prior 'tv-l2' has no option 'p' \\(valid options: none\\)"):
        build_objective([parse_prior("tv-l2,p=1")])


def test_zero_weight_drops_the_term():
    assert build_objective([parse_prior("tv-l2:0"), parse_prior("l2")]).describe() == "1e-05*l2"


def test_merge_requests_overrides_by_name_and_keeps_order():
    defaults = [parse_prior("cross-entropy"), parse_prior("tv-l2:1e-4"), parse_prior("l2:1e-5")]
    given = [parse_prior("tv-l2:1e-3"), parse_prior("tv-l1:0.5")]
    merged = merge_requests(defaults, given)
    assert [(r.name, r.weight) for r in merged] == [
        ("cross-entropy", None), ("l2", 1e-5), ("tv-l2", 1e-3), ("tv-l1", 0.5)]
    assert merge_requests(defaults, given, use_defaults=False) == given


def test_set_weight_is_the_shorthand_mechanism():
    requests = [parse_prior("cross-entropy"), parse_prior("bn-stats:0.05,first_bn_multiplier=10")]
    out = set_weight(requests, "bn-stats", 0.01)
    assert out[1] == PriorRequest("bn-stats", 0.01, (("first_bn_multiplier", "10"),))
    assert set_weight(requests, "bn-stats", None) == requests
    assert set_weight(requests, "tv-l2", 1e-4)[-1] == PriorRequest("tv-l2", 1e-4)
    assert [r.name for r in set_weight(requests, "bn-stats", 0)] == ["cross-entropy"]
    added = set_weight(requests, "bn-stats", None, first_bn_multiplier=2)
    assert added[1].options == (("first_bn_multiplier", 2),) and added[1].weight == 0.05


def test_priors_add_and_scale_like_numbers():
    ce, tv = CrossEntropy(), TotalVariation(p=2)
    objective = ce + 1e-4 * tv + 0.5 * (L2Norm() + tv)
    assert isinstance(objective, Objective)
    assert objective.describe() == "1*cross-entropy + 0.0001*tv-l2 + 0.5*l2 + 0.5*tv-l2"
    assert sum([ce, tv]).describe() == "1*cross-entropy + 1*tv-l2"
    assert (2 * objective).terms[0][0] == 2.0


def test_objective_value_is_the_weighted_sum_of_terms():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 6, 6)
    step = make_step(x)
    objective = CrossEntropy() + 1e-2 * TotalVariation(p=2) + 0.5 * L2Norm()
    total, terms = objective(step)
    assert set(terms) == {"cross-entropy", "tv-l2", "l2"}
    expected = terms["cross-entropy"] + 1e-2 * terms["tv-l2"] + 0.5 * terms["l2"]
    assert torch.allclose(total, expected)


def test_repeated_names_get_unique_labels():
    class Scaled(Prior):
        name = "scaled"

        def __init__(self, k):
            super().__init__(k=k)
            self.k = k

        def __call__(self, step):
            return step.inputs.sum() * self.k

    objective = Scaled(1) + Scaled(2)
    _, terms = objective(make_step(torch.ones(1, 1, 2, 2)))
    assert terms == {"scaled(k=1)": torch.tensor(4.0), "scaled(k=2)": torch.tensor(8.0)}


def test_attached_runs_setup_and_always_teardown():
    events = []

    class Hooked(Prior):
        name = "hooked"

        def setup(self, setup):
            events.append("setup")

        def teardown(self):
            events.append("teardown")

    objective = Hooked() + Hooked()
    with pytest.raises(ValueError):
        with objective.attached(Setup(teacher=None)):
            raise ValueError
    assert events == ["setup", "setup", "teardown", "teardown"]


def test_tv_l2_matches_the_spec_formula():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) ** 1.5
    d1 = x[..., :, :-1] - x[..., :, 1:]
    d2 = x[..., :-1, :] - x[..., 1:, :]
    d3 = x[..., 1:, :-1] - x[..., :-1, 1:]
    d4 = x[..., :-1, :-1] - x[..., 1:, 1:]
    step = make_step(x)
    tv2 = sum(torch.sqrt((d ** 2).sum()) for d in (d1, d2, d3, d4))
    tv1 = sum(d.abs().mean() for d in (d1, d2, d3, d4))
    assert torch.allclose(TotalVariation(p=2)(step), tv2)
    assert torch.allclose(TotalVariation(p=1)(step), tv1)


def test_tv_sees_all_four_directions():
    # A checkerboard has zero diagonal variation: only d1 and d2 contribute.
    board = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    x = board.float().expand(1, 1, 4, 4)
    assert TotalVariation(p=1)(make_step(x)).item() == pytest.approx(2.0)
    # A constant image varies in no direction.
    assert TotalVariation(p=1)(make_step(torch.ones(1, 1, 4, 4))).item() == 0.0


def test_l2_and_cross_entropy_match_direct_computation():
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 5)
    logits = torch.randn(4, 7)
    targets = torch.tensor([0, 3, 6, 2])
    step = make_step(x, logits, targets)
    direct_l2 = torch.stack([x[i].pow(2).sum().sqrt() for i in range(4)]).mean()
    assert torch.allclose(L2Norm()(step), direct_l2)
    direct_ce = -torch.log_softmax(logits, 1)[torch.arange(4), targets].mean()
    assert torch.allclose(CrossEntropy()(step), direct_ce)


def test_define_prior_builds_the_spec_from_the_constructor():
    from invkit.objective import define_prior
    from invkit.specs import Option, PriorSpec

    @define_prior("bright", "mean pixel value", default_weight=0.25,
                  help={"target": "the mean to reach"})
    class Bright(Prior):
        def __init__(self, target: float = 0.5, mode="abs", *args, scale: float = 2, **kwargs):
            super().__init__(target=target)

    assert Bright.name == "bright"
    assert Bright.spec == PriorSpec(
        "bright", "mean pixel value", factory=Bright, default_weight=0.25,
        options=(Option("target", float, 0.5, "the mean to reach"), Option("mode", str, "abs", ""),
                 Option("scale", float, 2, "")))

    @define_prior("plain", "no options")
    class Plain(Prior):
        pass

    assert Plain.spec == PriorSpec("plain", "no options", factory=Plain, default_weight=1.0,
                                   options=())


def test_options_from_signature_of_a_function():
    from invkit.objective import options_from_signature
    from invkit.specs import Option

    def factory(required, k: float = 5, ratio=0.5, name: typing.Optional[str] = "x"):
        return required

    # The hint wins over the default's type; a hint that is not a type (Optional[str]) falls back to the default's type.
    assert options_from_signature(factory, {"k": "neighbours"}) == (
        Option("k", float, 5, "neighbours"), Option("ratio", float, 0.5, ""),
        Option("name", str, "x", ""))
    with pytest.raises(ValueError) as error:
        options_from_signature(factory, {"zeta": "?", "alpha": "?", "k": "neighbours"})
    assert str(error.value) == "help for unknown options: alpha, zeta"


def _terms(objective):
    return [(w, p.name) for w, p in objective.terms]


def test_priors_and_objectives_divide_negate_and_subtract():
    ce, l2 = CrossEntropy(), L2Norm()
    assert _terms(ce / 4) == [(0.25, "cross-entropy")]
    assert _terms(-l2) == [(-1.0, "l2")]
    assert _terms(ce - l2) == [(1.0, "cross-entropy"), (-1.0, "l2")]
    both = 2 * ce + l2
    assert _terms(both / 8) == [(0.25, "cross-entropy"), (0.125, "l2")]
    assert _terms(-both) == [(-2.0, "cross-entropy"), (-1.0, "l2")]
    assert _terms(both - ce) == [(2.0, "cross-entropy"), (1.0, "l2"), (-1.0, "cross-entropy")]
    assert _terms(both - both) == [(2.0, "cross-entropy"), (1.0, "l2"),
                                   (-2.0, "cross-entropy"), (-1.0, "l2")]
    with pytest.raises(TypeError):
        both - 1


def test_an_empty_objective_is_a_float_zero():
    step = make_step(torch.zeros(2, 3, 4, 4), logits=torch.ones(2, 4, dtype=torch.float16))
    total, losses = Objective()(step)
    assert losses == {} and total.dtype == torch.float32 and total.shape == () and total.item() == 0


def test_prior_option_values_keep_later_equals_signs():
    assert parse_prior("tv-l2,mode=a=b") == PriorRequest("tv-l2", None, (("mode", "a=b"),))


def test_non_finite_weights_and_options_name_what_they_belong_to():
    from invkit.specs import Option

    with pytest.raises(InvkitError) as error:
        build_objective([PriorRequest("l2", float("nan"))])
    assert str(error.value) == "l2 weight=nan is not a finite number"
    with pytest.raises(InvkitError) as error:
        Option("k", float, 1.0).parse("inf")
    assert str(error.value) == "option k=inf is not a finite number"


def test_built_in_schedules_pinned():
    import math

    from invkit.schedules import build_schedule

    constant = build_schedule("constant")
    assert [constant(i, 10) for i in (0, 9)] == [1.0, 1.0]
    cosine = build_schedule("cosine")
    assert [cosine(i, 100) for i in (0, 50, 100)] == [1.0, 0.5 * (1 + math.cos(math.pi / 2)), 0.0]
    assert cosine(1, 100) == 0.5 * (1 + math.cos(math.pi / 100))


def test_total_variation_names_and_refusal():
    assert (TotalVariation(p=1).name, TotalVariation(p=2).name, TotalVariation().p) == (
        "tv-l1", "tv-l2", 2)
    with pytest.raises(ValueError) as error:
        TotalVariation(p=3)
    assert str(error.value) == "p must be 1 or 2, not 3"
