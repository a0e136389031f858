"""finite_float, the one rule for user-given numbers: each refusal's exact message (the
name and the value as the user wrote it), the inclusive bounds at and one past the limit,
and the float it returns."""

from __future__ import annotations

import pytest

from invkit.errors import InvkitError
from invkit.validate import finite_float


@pytest.mark.parametrize("value, kwargs, message", [
    (True, {}, "w=True is not a number"),
    (False, {}, "w=False is not a number"),
    ("abc", {}, "w=abc is not a number"),
    (None, {}, "w=None is not a number"),
    ([1.0], {}, "w=[1.0] is not a number"),
    (10 ** 400, {}, f"w={10 ** 400} is not a number"),
    ("nan", {}, "w=nan is not a finite number"),
    (float("inf"), {}, "w=inf is not a finite number"),
    ("-inf", {}, "w=-inf is not a finite number"),
    ("0", {"positive": True}, "w=0 must be positive"),
    (-0.5, {"positive": True}, "w=-0.5 must be positive"),
    ("-1", {"minimum": 0}, "w=-1 must be at least 0"),
    (0.24, {"minimum": 0.25}, "w=0.24 must be at least 0.25"),
    (2.5, {"maximum": 2}, "w=2.5 must be at most 2"),
    ("1.01", {"minimum": 0, "maximum": 1}, "w=1.01 must be at most 1"),
])
def test_each_refusal_names_the_value_and_the_rule(value, kwargs, message):
    with pytest.raises(InvkitError) as err:
        finite_float(value, "w", **kwargs)
    assert str(err.value) == message


def test_an_empty_name_gives_messages_about_the_value_alone():
    with pytest.raises(InvkitError) as err:
        finite_float("nan", "")
    assert str(err.value) == "nan is not a finite number"
    with pytest.raises(InvkitError) as err:
        finite_float(True, "")
    assert str(err.value) == "True is not a number"
    with pytest.raises(InvkitError) as err:
        finite_float(-3, "", minimum=1)
    assert str(err.value) == "-3 must be at least 1"


def test_values_at_the_bounds_are_accepted_and_returned_as_floats():
    for value, kwargs, expected in [
        ("0.5", {"positive": True}, 0.5), (3, {"positive": True}, 3.0),
        (1e-300, {"positive": True}, 1e-300), (0, {"minimum": 0}, 0.0),
        (1, {"maximum": 1}, 1.0), ("0.25", {"minimum": 0.25, "maximum": 0.25}, 0.25),
        (-7, {}, -7.0), (-2, {"maximum": 0}, -2.0), ("1e3", {"minimum": 0}, 1000.0),
    ]:
        result = finite_float(value, "w", **kwargs)
        assert result == expected and type(result) is float
