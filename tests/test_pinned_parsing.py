"""Exact behaviour of the small parsers and value objects mutation testing found unpinned:
typed options, ``--prior`` text, weight shorthands, objective labels and sums, and the
Teacher's normalisation helpers (issue 18; ``mutmut run``, see the README)."""

from __future__ import annotations

import pytest
import torch

from invkit.errors import InvkitError
from invkit.objective import (
    Objective, Prior, PriorRequest, Step, build_objective, build_prior, parse_prior, set_weight,
)
from invkit.specs import Option, PriorSpec, Teacher, TeacherMeta, parse_options
from invkit.validate import finite_float


class Const(Prior):
    """A prior whose value is fixed (and options only for display)."""

    name = "const"

    def __init__(self, value: float = 1.0, **options):
        super().__init__(**options)
        self.value = value

    def __call__(self, step):
        return torch.tensor(self.value, dtype=torch.float64)


def _step(dtype=torch.float16):
    return Step(inputs=torch.zeros(1, 3, 2, 2), logits=torch.zeros(1, 2, dtype=dtype),
                targets=torch.zeros(1, dtype=torch.long), teacher=None)


# --- typed options --------------------------------------------------------------------------

def test_option_parse_converts_each_type_exactly():
    assert Option("n", int, 1).parse("3") == 3 and Option("n", int, 1).parse(4) == 4
    assert Option("s", str, "").parse("abc") == "abc"
    flag = Option("b", bool, False)
    assert [flag.parse(w) for w in ("1", "True", " yes ", "ON")] == [True] * 4
    assert [flag.parse(w) for w in ("0", "false", "No", "off")] == [False] * 4
    assert flag.parse(True) is True and flag.parse(0) is False
    assert Option("x", float, 1.0).parse("2.5") == 2.5


@pytest.mark.parametrize("option, value, message", [
    (Option("n", int, 1), "x", "option n='x' is not a valid int"),
    (Option("n", int, 1), None, "option n=None is not a valid int"),
    (Option("n", int, 1), "1e999", "option n='1e999' is not a valid int"),
    (Option("b", bool, False), "maybe", "option b='maybe' is not a valid bool"),
    (Option("k", int, 1, choices=(1, 2)), "3", "option k='3' must be one of: 1, 2"),
    (Option("m", str, "a", choices=("a", "b")), "c", "option m='c' must be one of: a, b"),
])
def test_option_parse_errors_are_exact(option, value, message):
    with pytest.raises(InvkitError) as error:
        option.parse(value)
    assert str(error.value) == message


def test_option_choices_accept_valid_values():
    assert Option("k", int, 1, choices=(1, 2)).parse("2") == 2
    assert Option("m", float, 1.0, choices=(0.5, 1.0)).parse("0.5") == 0.5


def test_parse_options_fills_defaults_and_names_unknown_keys():
    options = (Option("b", int, 2), Option("a", float, 1.0))
    assert parse_options("thing", options, {}) == {"b": 2, "a": 1.0}
    assert parse_options("thing", options, {"a": "3"}) == {"b": 2, "a": 3.0}
    with pytest.raises(InvkitError) as error:
        parse_options("prior 'x'", options, {"c": 1})
    assert str(error.value) == "prior 'x' has no option 'c' (valid options: a, b)"
    with pytest.raises(InvkitError, match=r"\(valid options: none\)"):
        parse_options("prior 'x'", (), {"c": 1})


# --- --prior text ----------------------------------------------------------------------------

def test_parse_prior_reads_every_part():
    assert parse_prior(" tv-l2 ") == PriorRequest("tv-l2")
    assert parse_prior("tv-l2:1e-4") == PriorRequest("tv-l2", 1e-4)
    assert parse_prior("bn-stats:0.5, first_bn_multiplier = 3 ,x=y") == PriorRequest(
        "bn-stats", 0.5, (("first_bn_multiplier", "3"), ("x", "y")))
    assert parse_prior("adi,temperature=2") == PriorRequest("adi", None, (("temperature", "2"),))


FORM = "expected NAME[:WEIGHT][,key=value...], e.g. bn-stats:0.01,first_bn_multiplier=10"


@pytest.mark.parametrize("text, message", [
    (":1", "malformed --prior ':1': missing name; " + FORM),
    ("tv-l2:abc", "malformed --prior 'tv-l2:abc': weight 'abc' is not a number; " + FORM),
    ("tv-l2:inf", "malformed --prior 'tv-l2:inf': weight 'inf' is not finite (weights must "
                  "be finite numbers); " + FORM),
    ("bn-stats,foo", "malformed --prior 'bn-stats,foo': 'foo' is not key=value; " + FORM),
    ("bn-stats, =3", "malformed --prior 'bn-stats, =3': ' =3' is not key=value; " + FORM),
])
def test_parse_prior_errors_are_exact(text, message):
    with pytest.raises(InvkitError) as error:
        parse_prior(text)
    assert str(error.value) == message


# --- weight shorthands ------------------------------------------------------------------------

def test_set_weight_updates_the_first_request_of_its_name():
    requests = [PriorRequest("bn-stats", 0.1, (("first_bn_multiplier", 2.0),)),
                PriorRequest("bn-stats", 0.3), PriorRequest("l2")]
    assert set_weight(requests, "bn-stats", None) == requests
    assert set_weight(requests, "bn-stats", 0.5) == [
        PriorRequest("bn-stats", 0.5, (("first_bn_multiplier", 2.0),)),
        PriorRequest("bn-stats", 0.3), PriorRequest("l2")]
    assert set_weight(requests, "bn-stats", None, first_bn_multiplier=7.0)[0] == \
        PriorRequest("bn-stats", 0.1, (("first_bn_multiplier", 7.0),))
    assert set_weight(requests, "tv-l2", 2e-4)[-1] == PriorRequest("tv-l2", 2e-4)
    assert set_weight(requests, "l2", 0) == requests[:2]  # 0 drops the term
    with pytest.raises(InvkitError) as error:
        set_weight(requests, "bn-stats", float("nan"))
    assert str(error.value).startswith("bn-stats weight=nan")


# --- building priors and objectives -------------------------------------------------------------

def test_build_prior_sets_name_and_options_and_wraps_plugin_bugs():
    spec = PriorSpec("const-test", "c", factory=Const, options=(Option("value", float, 2.0),),
                     provider="tests-plugin")
    prior = build_prior(spec, {"value": "4"})
    assert (prior.name, prior.options, prior.value) == ("const-test", {"value": 4.0}, 4.0)

    def broken(**kwargs):
        raise ValueError("bad\n   value")

    with pytest.raises(InvkitError) as error:
        build_prior(PriorSpec("b", "b", factory=broken, provider="p"))
    assert str(error.value) == ("prior 'b' (from plugin 'p') failed to build: "
                                "ValueError: bad value")

    def refuses(**kwargs):
        raise InvkitError("value 3 is too big")

    with pytest.raises(InvkitError) as error:
        build_prior(PriorSpec("r", "r", factory=refuses, provider="p"))
    assert str(error.value) == "value 3 is too big"

    def long_message(**kwargs):
        raise RuntimeError("x" * 300)

    with pytest.raises(InvkitError) as error:
        build_prior(PriorSpec("l", "l", factory=long_message, provider="p"))
    assert str(error.value).endswith(": RuntimeError: " + "x" * 197 + "...")

    def silent(**kwargs):
        raise RuntimeError()

    with pytest.raises(InvkitError) as error:
        build_prior(PriorSpec("s", "s", factory=silent, provider="p"))
    assert str(error.value).endswith(": RuntimeError: no message")


def test_build_objective_sums_equal_terms_and_drops_zero_weights():
    objective = build_objective([parse_prior("tv-l2"), parse_prior("tv-l2:1e-4"),
                                 parse_prior("l2:0"), parse_prior("cross-entropy")])
    assert objective.describe() == "0.0002*tv-l2 + 1*cross-entropy"


# --- objective labels, descriptions and values -------------------------------------------------

def test_labels_and_descriptions():
    a = Const(1.0, k=2, m=0.5)
    a.name = "a"
    assert a.describe() == "a(k=2,m=0.5)" and repr(a) == "<Prior a(k=2,m=0.5)>"
    assert Objective([(1.0, a)]).labels() == ["a"]  # unique names stay plain
    b = Const(1.0, k=3)
    b.name = "a"
    assert Objective([(1.0, a), (2.0, b)]).labels() == ["a(k=2,m=0.5)", "a(k=3)"]
    assert Objective().describe() == "0" and repr(Objective()) == "<Objective 0>"
    assert (0.5 * a + b).describe() == "0.5*a(k=2,m=0.5) + 1*a(k=3)"


def test_objective_value_is_the_weighted_float_sum():
    one, two = Const(1.5), Const(-2.0)
    two.name = "two"
    total, terms = (2 * one + 0.25 * two)(_step())
    assert total.dtype == torch.float32 and total.item() == 2.5
    assert {k: v.item() for k, v in terms.items()} == {"const": 1.5, "two": -2.0}
    assert all(v.dtype == torch.float32 for v in terms.values())
    empty_total, empty_terms = Objective()(_step(torch.float16))
    assert empty_terms == {} and empty_total.dtype == torch.float32
    assert empty_total.shape == () and empty_total.item() == 0.0


def test_objectives_add_with_sum_and_refuse_other_types():
    one, two = Const(1.0), Const(2.0)
    objective = Objective([(1.0, one)])
    assert (0 + objective) is objective
    assert sum([objective, Objective([(1.0, two)])]).terms == ((1.0, one), (1.0, two))
    assert sum([one, two]).terms == ((1.0, one), (1.0, two))
    with pytest.raises(TypeError):
        "x" + objective
    with pytest.raises(TypeError):
        objective + "x"
    assert len(objective * 3) == 1 and (objective * 3).terms[0][0] == 3.0


# --- the Teacher's normalisation helpers -------------------------------------------------------

def _teacher():
    meta = TeacherMeta("t", 4, 3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0),
                       class_names=("a", "b", "c"))
    return Teacher(module=torch.nn.Identity(), meta=meta, name="t")


def test_teacher_normalisation_is_exact():
    teacher = _teacher()
    images = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    normal = teacher.normalize(images)
    assert normal[0, :, 0, 0].tolist() == [-1.0, 1.0, 0.5]
    assert torch.equal(teacher.denormalize(normal), images)
    assert torch.equal(teacher.prepare(images), normal)  # the right size: no resize
    low, high = teacher.pixel_bounds(images)
    assert low.shape == (1, 3, 1, 1)
    assert low.flatten().tolist() == [-1.0, -1.0, 0.0] and high.flatten().tolist() == [1.0, 3.0, 0.5]
    as64 = teacher.normalize(images.double())
    assert as64.dtype == torch.float64


def test_teacher_prepare_resizes_then_normalises():
    teacher = _teacher()
    big = torch.full((2, 3, 8, 8), 0.5)
    prepared = teacher.prepare(big)
    assert prepared.shape == (2, 3, 4, 4)
    assert torch.allclose(prepared, teacher.normalize(torch.full((2, 3, 4, 4), 0.5)))
    ramp = torch.linspace(0, 1, 8).view(1, 1, 1, 8).expand(1, 3, 8, 8)
    expected = torch.nn.functional.interpolate(ramp, size=(4, 4), mode="bilinear",
                                               antialias=True, align_corners=False)
    assert torch.equal(teacher.prepare(ramp), teacher.normalize(expected))


def test_class_name_in_and_out_of_range():
    meta = _teacher().meta
    assert [meta.class_name(i) for i in (-1, 0, 2, 3)] == [None, "a", "c", None]
    assert TeacherMeta("t", 4, 3).class_name(0) is None


# finite_float, the one rule for user-given numbers: every branch and message.

@pytest.mark.parametrize("value, kwargs, expected", [
    ("0.5", {}, 0.5), (3, {"positive": True}, 3.0), ("-2", {}, -2.0),
    (0, {"minimum": 0}, 0.0), (1, {"maximum": 1}, 1.0), (0.25, {"minimum": 0.25, "maximum": 0.25}, 0.25),
    (1e-12, {"positive": True}, 1e-12),
])
def test_accepted_values(value, kwargs, expected):
    result = finite_float(value, "x", **kwargs)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("value, name, kwargs, message", [
    (True, "--w", {}, "--w=True is not a number"),
    ("abc", "--w", {}, "--w=abc is not a number"),
    (None, "--w", {}, "--w=None is not a number"),
    ([1], "--w", {}, "--w=[1] is not a number"),
    (10**400, "--w", {}, f"--w={10**400!r} is not a number"),
    ("nan", "--w", {}, "--w=nan is not a finite number"),
    (float("-inf"), "--w", {}, "--w=-inf is not a finite number"),
    ("inf", "", {}, "inf is not a finite number"),
    (0, "lr", {"positive": True}, "lr=0 must be positive"),
    ("-0.5", "lr", {"positive": True}, "lr=-0.5 must be positive"),
    (-1e-9, "decay", {"minimum": 0}, "decay=-1e-09 must be at least 0"),
    ("1.5", "p", {"minimum": 0, "maximum": 1}, "p=1.5 must be at most 1"),
    (2, "", {"maximum": 1.25}, "2 must be at most 1.25"),
])
def test_refused_values_name_the_rule(value, name, kwargs, message):
    with pytest.raises(InvkitError) as error:
        finite_float(value, name, **kwargs)
    assert str(error.value) == message


def test_non_string_values_are_shown_by_their_repr():
    from decimal import Decimal

    with pytest.raises(InvkitError) as error:
        finite_float(Decimal("NaN"), "--w")
    assert str(error.value) == "--w=Decimal('NaN') is not a finite number"
