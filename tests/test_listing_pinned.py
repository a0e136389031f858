"""Whole outputs of the listing commands (``invkit plugins``, ``<kind>s list|show``).

Each table, caption and JSON document is pinned with a golden file, for an inline plugin
whose records exercise every branch (options or none, choices, presets, prior flags...)
and for the bundled records users read most; the helpers are pinned value by value.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pytest
from rich.console import Console

from invkit import hookimpl
from invkit.cli import listing
from invkit.errors import InvkitError
from invkit.methods import option
from invkit.specs import (
    MethodSpec, Option, Preset, PriorFlag, PriorSpec, ScheduleSpec, Stage, TeacherSpec,
    VerifierSpec,
)
from tests.golden import assert_golden
from tests.test_plugins import Brightness, build_tiny


@pytest.fixture(autouse=True)
def _width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


@dataclass(frozen=True)
class H7Options:
    steps: int | None = option(None, "optimisation steps", min=1)
    mode: str = option("fast", "how to run", flags=("--mode", "-m"), choices=("fast", "slow"))
    scale: float = option(0.5, "a scale")


class H7Zoo:
    @hookimpl
    def invkit_teachers(self):
        yield TeacherSpec("h7-net10", "ten", factory=build_tiny, source="zoo", input_size=8,
                          num_classes=3, batchnorm=True)
        yield TeacherSpec("h7-net2", "two", factory=build_tiny, batchnorm=False)
        yield TeacherSpec("h7-net1", "one: a long summary that has to fold when the table is "
                          "narrow", factory=build_tiny, source="zoo", input_size=16)

    @hookimpl
    def invkit_priors(self):
        yield PriorSpec("h7-bright", "brightness", factory=Brightness, default_weight=0.25,
                        options=(Option("target", float, 0.5, "target mean",
                                        choices=(0.25, 0.5)),
                                 Option("mode", str, "mean", "how")))
        yield PriorSpec("h7-plain", "no options", factory=Brightness, default_weight=1e-5)

    @hookimpl
    def invkit_schedules(self):
        yield ScheduleSpec("h7-plan", "a plan", kind="plan",
                           factory=lambda iterations=5: (Stage(iterations),),
                           options=(Option("iterations", int, 5, "steps"),))
        yield ScheduleSpec("h7-flat", "flat", factory=lambda: (lambda i, n: 1.0))

    @hookimpl
    def invkit_verifiers(self):
        yield VerifierSpec("h7-judge", "a judge", factory=lambda teacher: None,
                           options=(Option("k", int, 1, "top-k", choices=(1, 5)),))
        yield VerifierSpec("h7-bare", "no options", factory=lambda teacher: None)

    @hookimpl
    def invkit_methods(self):
        yield MethodSpec(
            "h7-method", "a test method", factory=lambda *a, **k: None, options=H7Options,
            default_priors=("cross-entropy", "h7-bright:0.5"), needs_batchnorm=True,
            prior_flags=(PriorFlag("bright", "h7-bright", flags=("--bright",)),
                         PriorFlag("target", "h7-bright", flags=("--target", "-t"),
                                   option="target"),
                         PriorFlag("tv", "tv-l2", flags=("--tv",), help="TV weight")),
            presets=(Preset("big", "big ones", teacher="h7-net10", families=("imagenet", "x"),
                            options=H7Options(steps=3), priors=("tv-l2:1",), bs=7,
                            verifier="h7-net1"),
                     Preset("small", "small ones", teacher="h7-net1", max_input_size=32),
                     Preset("both", "both rules", teacher="h7-net1", families=("cifar10",),
                            max_input_size=64, options=H7Options(mode="slow", scale=None)),
                     Preset("any", "general", teacher="h7-net1")))
        yield MethodSpec("h7-bare", "nothing else", factory=lambda *a, **k: None)


@pytest.fixture
def zoo(register_plugin):
    return register_plugin(H7Zoo(), "h7-zoo")


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


# --------------------------------------------------------------------------- helpers


def test_cell_helpers_spell_missing_values():
    """Missing values read "-" or "?", never "None"; option lists join with ", "."""
    assert listing._options(PriorSpec("p", "s", factory=int)) == "-"
    assert listing._options(object()) == "-"
    spec = PriorSpec("p", "s", factory=int, options=(Option("a", int, 1), Option("b", int, 2)))
    assert listing._options(spec) == "a, b"
    assert listing._maybe(None) == "-"
    assert listing._maybe(0) == "0"
    assert listing._maybe("x") == "x"
    assert [listing.yes_no(v) for v in (None, True, False)] == ["?", "yes", "no"]


def test_teacher_source_is_the_builtin_source_or_the_plugin():
    """Built-in teachers show their source ("-" when empty); a plugin's, the plugin."""
    def spec(provider, source):
        return TeacherSpec("t", "s", factory=int, source=source, provider=provider)

    assert listing.teacher_source(spec("", "torchvision")) == "torchvision"
    assert listing.teacher_source(spec("invkit.teachers", "cifar")) == "cifar"
    assert listing.teacher_source(spec("invkit.teachers", "")) == "-"
    assert listing.teacher_source(spec("", "")) == "-"
    assert listing.teacher_source(spec("mine", "cifar")) == "mine"


def test_natural_key_compares_numbers_as_numbers():
    """resnet18 < resnet101; the key itself is pinned (numbers first, text after)."""
    assert listing.natural_key("resnet101") == [(1, 0, "resnet"), (0, 101, "")]
    assert listing.natural_key("12ab") == [(0, 12, ""), (1, 0, "ab")]
    assert listing.natural_key("") == []
    names = ["resnet101", "resnet18", "a10b", "a9c", "vgg", "9"]
    assert sorted(names, key=listing.natural_key) == [
        "9", "a9c", "a10b", "resnet18", "resnet101", "vgg"]


def test_console_widths(monkeypatch):
    """Logs and pipes get at least 120 columns; a terminal its own width when asked."""
    assert listing.console().width == 120
    assert listing.console(fit_terminal=True).width == 120   # not a terminal: as wide
    monkeypatch.setenv("COLUMNS", "150")
    assert listing.console().width == 150
    assert listing.console(True).width == 150
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    assert listing.console(fit_terminal=True).width == 80
    assert listing.console(fit_terminal=True)._highlight is False
    assert listing.console(fit_terminal=False).width == 120
    out = io.StringIO()
    monkeypatch.setattr(listing, "Console", lambda **kw: Console(file=out, **kw))
    listing.console().print("[1, 2] 'x' 3.5")
    assert out.getvalue() == "[1, 2] 'x' 3.5\n"  # highlight=False: no colour codes


def test_make_table_folds_wrapping_columns_and_keeps_names_whole(zoo):
    """At 64 columns names stay on one line and summaries fold; title and caption shown."""
    records = listing.list_records("teacher", ("h7-*",), ())
    table = listing.make_table("teachers (3)", listing.COLUMNS["teacher"], records,
                               caption="the caption")
    out = io.StringIO()
    Console(file=out, width=64, highlight=False).print(table)
    assert_golden("listing-make-table-64", out.getvalue())
    bare = listing.make_table("t", (listing.Column("word", lambda r: r[0], wrap=False),
                                    listing.Column("text", lambda r: r[1])),
                              [("abcdefgh", "0123456789abcdefghij some words")])
    out = io.StringIO()
    Console(file=out, width=30, highlight=False).print(bare)
    assert_golden("listing-make-table-fold", out.getvalue())
    assert [c.overflow for c in bare.columns] == ["fold", "fold"]
    assert [c.no_wrap for c in bare.columns] == [True, False]
    assert bare.title == "t" and bare.caption is None and bare.title_justify == "left"


def test_columns_and_captions_per_kind():
    """Each kind's headers, and the no-wrap columns of the teacher listing."""
    headers = {kind: [(c.header, c.wrap) for c in cols] for kind, cols in listing.COLUMNS.items()}
    assert headers == {
        "teacher": [("name", False), ("source", False), ("input", False), ("classes", False),
                    ("BN", False), ("summary", True)],
        "prior": [("name", True), ("weight", True), ("options", True), ("provider", True),
                  ("summary", True)],
        "schedule": [("name", True), ("kind", True), ("options", True), ("provider", True),
                     ("summary", True)],
        "verifier": [("name", True), ("options", True), ("provider", True), ("summary", True)],
        "method": [("name", True), ("default priors", True), ("provider", True),
                   ("summary", True)],
    }
    assert listing.FIT_TERMINAL == {"teacher"}
    assert listing.BUILTIN_TEACHERS == "invkit.teachers"


# --------------------------------------------------------------------------- lists


def test_teachers_list_of_a_plugin(zoo, invoke):
    """Natural order (net1, net2, net10), sizes, BN yes/no/?, plugin as source, caption."""
    assert_golden("listing-teachers-h7", _ok(invoke("teachers", "list", "--include", "h7-*")))
    out = _ok(invoke("teachers", "list", "--include", "h7-*", "--exclude", "*1*", "--json"))
    assert_golden("listing-teachers-h7-json", out)


def test_teachers_list_caption_counts_only_when_filtered(zoo, invoke):
    """No pattern: the plain caption; an empty match: "0 matching." before it."""
    assert_golden("listing-teachers-none", _ok(invoke("teachers", "list", "--exclude", "*")))
    assert_golden("listing-teachers-all", _ok(invoke("teachers", "list")))


def test_teachers_list_with_timm_patterns(invoke):
    """timm classifiers appear only for a ``timm:`` include, merged in natural order."""
    pytest.importorskip("timm", reason="timm is an optional extra")
    records = listing.list_records("teacher", ("timm:resnet1*", "resnet1*"),
                                   ("*resnet10*", "*d"))
    names = [r.name for r in records]
    assert names == sorted(names, key=listing.natural_key)
    assert "resnet18" in names and "timm:resnet18" in names
    assert not [n for n in names if "resnet10" in n or n.endswith("d")]
    assert not [n for n in listing.list_records("teacher", ("resnet1*",), ()) if ":" in n.name]
    out = _ok(invoke("teachers", "list", "--include", "timm:resnet18", "--json"))
    assert [r["name"] for r in json.loads(out)] == ["timm:resnet18"]


def test_list_records_of_other_kinds_keep_the_registry_order(zoo):
    """Non-teacher kinds: the registry's order and patterns, no timm."""
    names = [r.name for r in listing.list_records("prior", ("h7-*", "l2"), ("*plain",))]
    assert names == ["h7-bright", "l2"]
    assert [r.name for r in listing.list_records("verifier", (), ())] == [
        "accuracy", "h7-bare", "h7-judge"]


@pytest.mark.parametrize("group", ["priors", "schedules", "verifiers", "methods"])
def test_lists_of_a_plugin(zoo, invoke, group):
    """Each listing's table (with the "N matching." caption) and its JSON."""
    assert_golden(f"listing-{group}-h7", _ok(invoke(group, "list", "--include", "h7-*")))
    out = _ok(invoke(group, "list", "--include", "h7-*", "--json"))
    assert_golden(f"listing-{group}-h7-json", out)


@pytest.mark.parametrize("group", ["priors", "schedules", "verifiers", "methods"])
def test_bundled_lists(invoke, group):
    """The bundled records' tables, unfiltered (plain caption or none)."""
    assert_golden(f"listing-{group}-bundled", _ok(invoke(group, "list")))


# --------------------------------------------------------------------------- show


@pytest.mark.parametrize("group,name", [
    ("priors", "h7-bright"), ("priors", "h7-plain"), ("schedules", "h7-plan"),
    ("schedules", "h7-flat"), ("verifiers", "h7-judge"), ("verifiers", "h7-bare"),
    ("methods", "h7-method"), ("methods", "h7-bare"), ("teachers", "h7-net2"),
])
def test_show_a_plugin_record(zoo, invoke, group, name):
    """Header line, summary, fields, the options table (or "options: none"), the prior's
    "Use:" line; a method's flags, priors and presets; and the same as JSON."""
    assert_golden(f"listing-show-{group}-{name}", _ok(invoke(group, "show", name)))
    assert_golden(f"listing-show-{group}-{name}-json",
                  _ok(invoke(group, "show", name, "--json")))


@pytest.mark.parametrize("group,name", [
    ("methods", "deepinversion"), ("methods", "pii"), ("methods", "fast"),
    ("priors", "bn-stats"), ("priors", "tv-l2"), ("priors", "cross-entropy"),
    ("schedules", "warmup-cosine"),
    ("verifiers", "accuracy"), ("teachers", "digits"),
])
def test_show_bundled_records(invoke, group, name):
    """What users read before a run: the bundled methods' options and presets."""
    assert_golden(f"listing-show-bundled-{name}", _ok(invoke(group, "show", name)))


def test_show_a_file_is_refused_with_one_line(invoke):
    """A checkpoint spec names no teacher record: exit 2 and one exact line."""
    result = invoke("teachers", "show", "checkpoint:model.pt")
    assert result.exit_code == 2
    assert result.output == ("Error: checkpoint:model.pt is a file, not a teacher name: "
                             "'invkit teachers show' takes a name from 'invkit teachers list'\n")
    with pytest.raises(InvkitError):
        listing.find_record("teacher", "checkpoint:x.pt")


def test_find_record_by_kind(zoo):
    """Teachers by spec (timm:NAME too), others from their registry."""
    assert listing.find_record("teacher", "h7-net2").name == "h7-net2"
    assert listing.find_record("prior", "h7-bright").provider == "h7-zoo"
    with pytest.raises(InvkitError) as err:
        listing.find_record("verifier", "h7-judg")
    assert str(err.value) == ("unknown verifier 'h7-judg'; did you mean: h7-judge? "
                              "(valid: accuracy, h7-bare, h7-judge)")


# --------------------------------------------------------------------------- JSON


def test_record_dict_and_option_dict():
    """Callables left out, options spelt out (a method's flags defaulted), presets' set
    values only."""
    spec = MethodSpec("m", "s", factory=int, options=H7Options,
                      presets=(Preset("p", "ps", teacher="t", options=H7Options(steps=2)),))
    out = listing.record_dict(spec)
    assert out["options"] == [
        {"name": "steps", "type": "int", "default": None, "help": "optimisation steps",
         "choices": None, "flags": ["--steps"]},
        {"name": "mode", "type": "str", "default": "fast", "help": "how to run",
         "choices": ["fast", "slow"], "flags": ["--mode", "-m"]},
        {"name": "scale", "type": "float", "default": 0.5, "help": "a scale", "choices": None,
         "flags": ["--scale"]}]
    assert "factory" not in out and out["configure"] is None
    assert out["presets"] == [{
        "name": "p", "summary": "ps", "teacher": "t",
        "options": {"steps": 2, "mode": "fast", "scale": 0.5}, "priors": [], "bs": 64,
        "targets": None, "verifier": None, "families": [], "max_input_size": None,
        "weights": None, "verifier_weights": None}]
    assert listing.record_dict(MethodSpec("m", "s", factory=int))["options"] == []
    opt = Option("snake_case", bool, True, "h", choices=(True,))
    assert listing.option_dict(opt) == {"name": "snake_case", "type": "bool", "default": True,
                                        "help": "h", "choices": [True]}
    from invkit.methods import MethodOption

    assert listing.option_dict(MethodOption("a_b", int, 3))["flags"] == ["--a-b"]


def test_plain_turns_records_into_json_values():
    """Dataclasses become dicts (callables dropped; option dataclasses keep set fields);
    tuples and lists become lists."""
    assert listing._plain((Stage(3), [Stage(1, 2)])) == [
        {"iterations": 3, "downsample": 1}, [{"iterations": 1, "downsample": 2}]]
    assert listing._plain(H7Options(scale=None)) == {"mode": "fast"}
    assert listing._plain(Stage) is Stage
    spec = ScheduleSpec("s", "x", factory=int)
    assert listing._plain(spec) == {"name": "s", "summary": "x", "kind": "lr",
                                    "options": [], "provider": ""}


# --------------------------------------------------------------------------- plugins


def test_plugins_table_and_json(zoo, invoke):
    """Every plugin with its version ("-" for an inline one) and sorted hooks."""
    assert_golden("listing-plugins", _ok(invoke("plugins")))
    rows = json.loads(_ok(invoke("plugins", "--json")))
    assert rows[-1] == {"name": "h7-zoo", "version": "-", "hooks": [
        "invkit_methods", "invkit_priors", "invkit_schedules", "invkit_teachers",
        "invkit_verifiers"]}
    assert_golden("listing-plugins-json", json.dumps(rows[:-1], indent=2))


def test_only_the_teacher_listing_fits_the_terminal(zoo, invoke, monkeypatch):
    """print_table asks for the terminal's width for teachers only."""
    asked = []

    def fake_console(fit_terminal=False):
        asked.append(fit_terminal)
        return Console(file=io.StringIO(), width=120)

    monkeypatch.setattr(listing, "console", fake_console)
    _ok(invoke("teachers", "list", "--include", "h7-*"))
    _ok(invoke("priors", "list"))
    assert asked == [True, False]


def test_print_table_arguments(zoo, invoke, monkeypatch):
    """Title with the count; caption "N matching." alone (no trailing space) for a kind
    without a caption, None without patterns."""
    calls = []
    monkeypatch.setattr(listing, "print_table",
                        lambda title, columns, records, caption, fit_terminal: calls.append(
                            (title, columns, [r.name for r in records], caption,
                             fit_terminal)))
    _ok(invoke("priors", "list", "--include", "h7-*"))
    _ok(invoke("schedules", "list", "--exclude", "*"))
    _ok(invoke("methods", "list"))
    assert calls[0] == ("priors (2)", listing.COLUMNS["prior"], ["h7-bright", "h7-plain"],
                        "2 matching.", False)
    assert calls[1][0] == "schedules (0)" and calls[1][3] == "0 matching."
    assert calls[2][0] == "methods (5)" and calls[2][3] is None
