"""``invkit.cli.options`` pinned (h2's group): FiniteFloat's exact messages and label,
OutputDir's empty-path refusal, shell completion of names, and how method defaults,
``--prior`` entries and shorthand flags combine.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import click
import pytest

from invkit.cli.options import (
    FiniteFloat, OutputDir, complete_names, prior_options, resolve_prior_requests,
    teacher_options,
)
from invkit.errors import InvkitError
from invkit.objective import PriorRequest as P
from invkit.registry import registry


def _option(*decls, **kwargs):
    return click.Option(list(decls), **kwargs)


@pytest.mark.parametrize("kind, value, expected", [
    (FiniteFloat(), "0.5", 0.5), (FiniteFloat(), 2, 2.0), (FiniteFloat(), "-3", -3.0),
    (FiniteFloat(minimum=0), "0", 0.0), (FiniteFloat(maximum=1), "1", 1.0),
    (FiniteFloat(minimum=-1, maximum=1), "-1", -1.0), (FiniteFloat(positive=True), "1e-9", 1e-9),
])
def test_finite_float_accepts(kind, value, expected):
    """Finite values within inclusive bounds come back as floats."""
    result = kind.convert(value, _option("--w"), None)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("kind, value, message", [
    (FiniteFloat(), "nan", "--temperature=nan is not a finite number"),
    (FiniteFloat(), "1e999", "--temperature=inf is not a finite number"),
    (FiniteFloat(), "-inf", "--temperature=-inf is not a finite number"),
    (FiniteFloat(), "x", "--temperature=x is not a number"),
    (FiniteFloat(), "", "--temperature= is not a number"),
    (FiniteFloat(), None, "--temperature=None is not a number"),
    (FiniteFloat(minimum=0), "-0.5", "--temperature=-0.5 must be at least 0"),
    (FiniteFloat(maximum=2), "2.5", "--temperature=2.5 must be at most 2"),
    (FiniteFloat(positive=True), "0", "--temperature=0.0 must be positive"),
    (FiniteFloat(positive=True), "-1", "--temperature=-1.0 must be positive"),
])
def test_finite_float_refuses_naming_the_longest_flag(kind, value, message):
    """The message names the option's longest spelling (``--temperature``, not ``-T``)."""
    with pytest.raises(InvkitError) as err:
        kind.convert(value, _option("-T", "--temperature"), None)
    assert str(err.value) == message


def test_finite_float_without_a_param_names_the_value():
    """No param (or one without flags): the message says ``value``."""
    with pytest.raises(InvkitError) as err:
        FiniteFloat().convert("nan", None, None)
    assert str(err.value) == "value=nan is not a finite number"
    with pytest.raises(InvkitError) as err:
        FiniteFloat().convert("inf", SimpleNamespace(opts=[]), None)
    assert str(err.value) == "value=inf is not a finite number"


def test_finite_float_metadata():
    """Name, metavar and repr (what help pages and click's messages show)."""
    kind = FiniteFloat(minimum=1, maximum=2, positive=True)
    assert (kind.minimum, kind.maximum, kind.positive) == (1, 2, True)
    assert (FiniteFloat().minimum, FiniteFloat().maximum, FiniteFloat().positive) == (
        None, None, False)
    assert kind.name == "float" and repr(kind) == "FiniteFloat"
    assert kind.get_metavar(_option("--w")) == "FLOAT"


@pytest.mark.parametrize("value", ["", " ", "\t"])
def test_output_dir_refuses_empty(value):
    """An empty path names the option's longest spelling (``--output``, not ``-o``)."""
    with pytest.raises(InvkitError) as err:
        OutputDir().convert(value, _option("-o", "--output"), None)
    assert str(err.value) == "the output path is empty: pass --output DIR"
    with pytest.raises(InvkitError) as err:
        OutputDir().convert(value, _option("-d", "--dest"), None)
    assert str(err.value) == "the output path is empty: pass --dest DIR"
    with pytest.raises(InvkitError) as err:
        OutputDir().convert(value, None, None)
    assert str(err.value) == "the output path is empty: pass --output DIR"


def test_output_dir_converts_to_a_path(tmp_path):
    """A non-empty path comes back as a Path; an existing file is refused (no files)."""
    kind = OutputDir()
    assert kind.convert("a/b", None, None) == Path("a/b")
    assert isinstance(kind.convert(" x", None, None), Path)
    assert (kind.file_okay, kind.dir_okay, kind.type) == (False, True, Path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(click.BadParameter) as err:
        kind.convert(str(tmp_path / "f"), None, None)
    assert err.value.message == f"Directory {str(tmp_path / 'f')!r} is a file."


def test_complete_names():
    """Completion lists registered names starting with the text, with their summaries."""
    items = complete_names("teacher")(None, None, "digits")
    teachers = registry("teacher")
    expected = [r.name for r in teachers if r.name.startswith("digits")]
    assert [c.value for c in items] == expected and "digits" in expected
    assert [c.help for c in items] == [teachers.get(n).summary for n in expected]
    assert [c.value for c in complete_names("prior")(None, None, "tv")] == ["tv-l1", "tv-l2"]
    assert complete_names("prior")(None, None, "zz") == []


def _command():
    def command(**values):
        pass

    return click.command("c")(teacher_options(prior_options(command)))


def test_teacher_and_prior_options_complete_their_kinds():
    """``--teacher``/``--arch`` complete teacher names, ``--prior`` prior names."""
    command = _command()
    params = {p.name: p for p in command.params}
    ctx = click.Context(command)
    assert [c.value for c in params["teacher"].shell_complete(ctx, "digits-v")] == [
        "digits-verifier", "digits-vit"]
    assert [c.value for c in params["arch"].shell_complete(ctx, "digits-v")] == [
        "digits-verifier", "digits-vit"]
    assert [c.value for c in params["prior"].shell_complete(ctx, "tv")] == ["tv-l1", "tv-l2"]
    assert [(p.name, p.opts) for p in command.params] == [
        ("teacher", ["--teacher"]), ("arch", ["--arch", "--arch-name", "--arch_name"]),
        ("weights", ["--weights"]), ("trust_checkpoint", ["--trust-checkpoint"]),
        ("prior", ["--prior"]), ("no_default_priors", ["--no-default-priors"]),
        ("dry_run", ["--dry-run"])]
    ctx = command.make_context("c", [])
    assert ctx.params == {"teacher": None, "arch": None, "weights": None,
                          "trust_checkpoint": False, "prior": (), "no_default_priors": False,
                          "dry_run": False}


def test_prior_option_parses_each_entry():
    """``--prior`` values arrive parsed, in order, repeats kept."""
    command = _command()
    ctx = command.make_context("c", ["--prior", "tv-l2:0.5", "--prior", "l2,k=v",
                                     "--prior", "tv-l2"])
    assert ctx.params["prior"] == (P("tv-l2", 0.5), P("l2", None, (("k", "v"),)), P("tv-l2"))


DEFAULTS = [P("a", 1.0), P("b")]


@pytest.mark.parametrize("given, no_defaults, shorthands, expected", [
    ([P("b", 2.0), P("c", 3.0)], False, None, [P("a", 1.0), P("b", 2.0), P("c", 3.0)]),
    ([P("b", 2.0), P("c", 3.0)], True, None, [P("b", 2.0), P("c", 3.0)]),
    ([], False, None, DEFAULTS),
    ([], True, None, []),
    ([P("c", 3.0)], False, {"a": 0.5, "b": None, "d": 2.0},
     [P("a", 0.5), P("b"), P("c", 3.0), P("d", 2.0)]),
    ([P("c", 3.0)], False, {"a": 0.0}, [P("b"), P("c", 3.0)]),
    ([P("c", 3.0)], True, {"a": 4.0}, [P("c", 3.0), P("a", 4.0)]),
    ([], False, {}, DEFAULTS),
])
def test_resolve_prior_requests(given, no_defaults, shorthands, expected):
    """Defaults, then ``--prior`` entries (replacing defaults of their name), then flags
    (a weight 0 drops the term, ``None`` changes nothing)."""
    assert resolve_prior_requests(DEFAULTS, given, no_defaults, shorthands) == expected


def test_resolve_prior_requests_default_keeps_defaults():
    """``no_default_priors`` defaults to False: the method's defaults are kept."""
    assert resolve_prior_requests(DEFAULTS, [P("c")]) == [P("a", 1.0), P("b"), P("c")]
