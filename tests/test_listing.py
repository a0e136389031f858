"""Listing and inspecting commands, include/exclude patterns, errors, --help and --version."""

from __future__ import annotations

import json
import math

import click
import pytest

from invkit import hookimpl
from invkit.cli import make_cli
from invkit.registry import registry
from invkit.schedules import scale_plan, warmup_cosine
from invkit.specs import Option, PriorSpec, Stage, TeacherSpec
from tests.test_plugins import Brightness, build_tiny


class Zoo:
    @hookimpl
    def invkit_teachers(self):
        for name in ("zoo-alpha", "zoo-beta", "zoo-beta-large"):
            yield TeacherSpec(name, f"{name} test net", factory=build_tiny, source="zoo",
                              input_size=8, num_classes=3)

    @hookimpl
    def invkit_priors(self):
        yield PriorSpec("zoo-bright", "brightness", factory=Brightness, default_weight=0.25,
                        options=(Option("target", float, 0.5, "target mean",
                                        choices=(0.25, 0.5)),))


def test_teachers_list_include_exclude_json(register_plugin, invoke):
    register_plugin(Zoo(), "zoo-plugin")
    result = invoke("teachers", "list", "--include", "zoo-*", "--exclude", "*-large", "--json")
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["zoo-alpha", "zoo-beta"]
    assert rows[0] | {"summary": None} == {
        "name": "zoo-alpha", "summary": None, "source": "zoo", "input_size": 8,
        "num_classes": 3, "default_weights": "none", "provider": "zoo-plugin",
        "grayscale": False, "family": None, "batchnorm": None}


def test_teachers_list_table_shows_source_size_classes_and_provider(register_plugin, invoke):
    register_plugin(Zoo(), "zoo-plugin")
    out = invoke("teachers", "list", "--include", "zoo-alpha").output
    line = next(l for l in out.splitlines() if "zoo-alpha" in l)
    assert all(word in line for word in ("zoo", "8", "3", "zoo-plugin"))
    assert "1 matching" in out


def test_registry_list_patterns():
    names = [s.name for s in registry("prior").list(include=["tv-*", "l2"], exclude="*-l1")]
    assert names == ["l2", "tv-l2"]


def test_priors_list_and_show(register_plugin, invoke):
    register_plugin(Zoo(), "zoo-plugin")
    rows = {r["name"]: r for r in json.loads(invoke("priors", "list", "--json").output)}
    assert rows["zoo-bright"]["default_weight"] == 0.25
    assert rows["zoo-bright"]["options"] == [{"name": "target", "type": "float", "default": 0.5,
                                              "help": "target mean", "choices": [0.25, 0.5]}]
    assert rows["tv-l2"]["provider"] == "invkit.priors"
    shown = invoke("priors", "show", "zoo-bright").output
    for fragment in ("zoo-plugin", "target", "float", "0.5", "target mean",
                     "--prior zoo-bright:0.25,target=0.5"):
        assert fragment in shown


@pytest.mark.parametrize("group,expected", [
    ("schedules", "warmup-cosine"), ("verifiers", "accuracy"), ("methods", "deepinversion"),
])
def test_other_listings(invoke, group, expected):
    result = invoke(group, "list")
    assert result.exit_code == 0 and expected in result.output
    names = [r["name"] for r in json.loads(invoke(group, "list", "--json").output)]
    assert expected in names


def test_verifiers_list_says_any_teacher_can_be_the_network(invoke):
    assert "any teacher spec" in invoke("verifiers", "list").output


@pytest.mark.parametrize("args,fragments", [
    (["priors", "show", "tv"], ["unknown prior 'tv'", "did you mean: tv-l2, tv-l1"]),
    (["teachers", "show", "zoo-alhpa"], ["unknown teacher 'zoo-alhpa'", "zoo-alpha"]),
    (["run", "deepinversoin"], ["unknown method 'deepinversoin'", "deepinversion"]),
    (["schedules", "show", "cosinus"], ["unknown schedule", "cosine"]),
])
def test_unknown_names_are_one_line_with_choices_and_exit_2(register_plugin, invoke, args,
                                                            fragments):
    register_plugin(Zoo(), "zoo-plugin")
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    for fragment in fragments:
        assert fragment in result.output


def test_version(invoke):
    from invkit import __version__

    assert invoke("--version").output.strip() == f"invkit, version {__version__}"


def test_every_command_is_documented():
    def walk(command, path):
        yield path, command
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                yield from walk(command.get_command(ctx, name), path + [name])

    for path, command in walk(make_cli(), ["invkit"]):
        assert (command.help or "").strip(), f"{' '.join(path)} has no help"
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in ("help", "version"):
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"


def test_warmup_cosine_matches_the_formula():
    lr = warmup_cosine(warmup=100)
    assert lr(0, 2000) == pytest.approx(0.01)
    assert lr(99, 2000) == pytest.approx(1.0)
    i = 1000
    assert lr(i, 2000) == pytest.approx(0.5 * (1 + math.cos(math.pi * (i - 100) / 1900)))
    assert lr(1999, 2000) > 0 and lr(2000, 2000) == pytest.approx(0.0)


def test_scale_plan_keeps_proportions():
    assert scale_plan((Stage(2000, 2), Stage(1000)), 300) == (Stage(200, 2), Stage(100))
    assert scale_plan((Stage(2000),), 7) == (Stage(7),)
    assert sum(s.iterations for s in scale_plan((Stage(2000, 2), Stage(1000)), 301)) == 301


def test_natural_order_puts_numbers_before_text_and_is_total():
    from invkit.registry import natural_key

    assert sorted(["b", "a", "10", "9", "1a", "x2", "x10", "x1b"], key=natural_key) == [
        "1a", "9", "10", "a", "b", "x1b", "x2", "x10"]
    assert sorted(["1", "01", "001"], key=natural_key) == ["001", "01", "1"]


def test_schedule_refusals_are_exact():
    from invkit.errors import InvkitError
    from invkit.schedules import build_schedule

    with pytest.raises(ValueError) as error:
        scale_plan((Stage(2), Stage(2), Stage(2)), 2)
    assert str(error.value) == "2 iterations cannot cover 3 stages"
    assert scale_plan((Stage(2), Stage(2), Stage(2)), 3) == (Stage(1), Stage(1), Stage(1))
    with pytest.raises(InvkitError) as error:
        build_schedule("cosine", kind="plan")
    plans = [s.name for s in registry("schedule") if s.factory().__class__ is tuple]
    assert plans[:4] == ["single-stage", "deepinversion-setting-0", "deepinversion-setting-1",
                         "deepinversion-setting-2"]
    assert str(error.value) == ("schedule 'cosine' is a lr schedule, not a plan one (valid: "
                                + ", ".join(plans) + ")")
    with pytest.raises(InvkitError) as error:
        build_schedule("warmup-cosine, warmup")
    assert str(error.value) == ("malformed schedule 'warmup-cosine, warmup': 'warmup' is not "
                                "key=value")
    assert build_schedule(" warmup-cosine , warmup = 4 ")(3, 10) == 1.0
    assert build_schedule("warmup-cosine")(0, 1000) == 0.01


def test_single_stage_default_is_2000_full_resolution_iterations():
    from invkit.schedules import single_stage

    assert single_stage() == (Stage(2000, 1),)


def test_schedule_option_errors_and_short_spans():
    from invkit.errors import InvkitError
    from invkit.schedules import build_schedule

    with pytest.raises(InvkitError) as error:
        build_schedule("warmup-cosine,foo=1")
    assert str(error.value) == "schedule 'warmup-cosine' has no option 'foo' (valid options: warmup)"
    with pytest.raises(InvkitError) as error:
        build_schedule("warmup-cosine,warmup=1=2")      # the first '=' splits key and value
    assert str(error.value) == "option warmup='1=2' is not a valid int"
    assert warmup_cosine()(99, 1000) == 1.0             # default warm-up: 100 iterations
    # One iteration (or none) after the warm-up still ends at 0.
    assert warmup_cosine(warmup=2)(3, 3) == 0.0
    assert warmup_cosine(warmup=2)(3, 2) == 0.0
