"""Records, registries, the lazy public API and the CLI's error handling, value by value:
option parsing and its messages, record defaults, normalisation, registry order and
conflicts, ``invkit.__getattr__``, ``Error:``/``Warning:`` lines and exit codes."""

from __future__ import annotations

import importlib
import sys
import warnings

import click
import pluggy
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import invkit
from invkit import hookimpl, hookspecs, specs
from invkit.cli import InvkitGroup, RunGroup, main, make_cli, plugin_warnings_as_lines
from invkit.errors import InvkitError, PluginConflict
from invkit.plugins import PluginWarning
from invkit.registry import Registry, _patterns, natural_key, registry
from invkit.specs import (
    KINDS, MethodSpec, Option, Preset, PriorFlag, PriorSpec, ScheduleSpec, Stage, Teacher,
    TeacherMeta, TeacherSpec, VerifierSpec, parse_options,
)
from tests.expect import invkit_error

# --------------------------------------------------------------------------- specs


def test_option_parse_values():
    """Typed values; booleans from words (any case, spaces) or from non-strings."""
    assert Option("n", int, 1).parse("3") == 3
    assert Option("s", str, "").parse(5) == "5"
    f = Option("f", float, 1.0).parse("2.5")
    assert f == 2.5 and type(f) is float
    b = Option("b", bool, False)
    assert [b.parse(w) for w in (" Yes ", "TRUE", "on", "1")] == [True] * 4
    assert [b.parse(w) for w in ("no", "False", " OFF", "0")] == [False] * 4
    assert b.parse(0) is False and b.parse(1) is True
    assert specs._BOOL_WORDS == {"1": True, "true": True, "yes": True, "on": True,
                                 "0": False, "false": False, "no": False, "off": False}
    assert Option("k", int, 1, choices=(1, 5)).parse("5") == 5


def test_option_parse_refusals():
    """The full message of each refusal: type, choices, non-finite floats."""
    assert invkit_error(Option("n", int, 1).parse, "x") == "option n='x' is not a valid int"
    assert invkit_error(Option("n", int, 1).parse, None) == "option n=None is not a valid int"
    assert invkit_error(Option("n", int, 1).parse, float("inf")) == (
        "option n=inf is not a valid int")
    assert invkit_error(Option("b", bool, 1).parse, "maybe") == (
        "option b='maybe' is not a valid bool")
    assert invkit_error(Option("f", float, 1.0).parse, "nan") == (
        "option f=nan is not a finite number")
    assert invkit_error(Option("k", int, 1, choices=(1, 5)).parse, "7") == (
        "option k='7' must be one of: 1, 5")
    assert invkit_error(Option("m", str, "a", choices=("a", "b")).parse, "c") == (
        "option m='c' must be one of: a, b")
    assert invkit_error(Option("f", float, 1.0, choices=(0.5,)).parse, 2) == (
        "option f=2 must be one of: 0.5")


def test_parse_options():
    """Defaults filled in, given values parsed; an unknown key lists the valid ones."""
    opts = (Option("m", float, 10.0), Option("a", int, 1))
    assert parse_options("x", opts, {"a": "4"}) == {"m": 10.0, "a": 4}
    assert parse_options("x", opts, {}) == {"m": 10.0, "a": 1}
    with pytest.raises(InvkitError) as err:
        parse_options("prior 'p'", opts, {"a": "1", "z": "2"})
    assert str(err.value) == "prior 'p' has no option 'z' (valid options: a, m)"
    with pytest.raises(InvkitError) as err:
        parse_options("p", (), {"z": 1})
    assert str(err.value) == "p has no option 'z' (valid options: none)"


def test_record_defaults():
    """The defaults plugins rely on when they leave a field out."""
    meta = TeacherMeta("a", 8, 3)
    assert (meta.mean, meta.std, meta.class_names, meta.weights, meta.grayscale,
            meta.family) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), None, "none",
                             False, None)
    t = TeacherSpec("t", "s", factory=int)
    assert (t.source, t.input_size, t.num_classes, t.default_weights, t.grayscale, t.family,
            t.batchnorm, t.provider) == ("", None, None, "none", False, None, None, "")
    p = PriorSpec("p", "s", factory=int)
    assert (p.default_weight, p.options, p.provider) == (1.0, (), "")
    s = ScheduleSpec("s", "s", factory=int)
    assert (s.kind, s.options, s.provider) == ("lr", (), "")
    assert Stage(3) == Stage(3, 1)
    v = VerifierSpec("v", "s", factory=int)
    assert (v.options, v.provider) == ((), "")
    f = PriorFlag("f", "p")
    assert (f.flags, f.option, f.help) == ((), None, "")
    pr = Preset("p", "s", teacher="t")
    assert (pr.options, pr.priors, pr.bs, pr.targets, pr.verifier, pr.families,
            pr.max_input_size, pr.weights, pr.verifier_weights) == (
        None, (), 64, None, None, (), None, None, None)
    m = MethodSpec("m", "s", factory=int)
    assert (m.options, m.configure, m.default_priors, m.presets, m.prior_flags,
            m.needs_batchnorm, m.provider) == (None, None, (), (), (), False, "")
    o = Option("o", int, 1)
    assert (o.help, o.choices) == ("", None)
    assert KINDS == {"teacher": TeacherSpec, "prior": PriorSpec, "schedule": ScheduleSpec,
                     "verifier": VerifierSpec, "method": MethodSpec}
    for name in specs.__all__:
        assert getattr(specs, name) is not None


def test_class_name_bounds():
    meta = TeacherMeta("a", 8, 3, class_names=("x", "y", "z"))
    assert [meta.class_name(i) for i in (-1, 0, 2, 3)] == [None, "x", "z", None]
    assert TeacherMeta("a", 8, 3).class_name(0) is None
    assert TeacherMeta("a", 8, 3, class_names=()).class_name(0) is None


def teacher(size=4) -> Teacher:
    meta = TeacherMeta("a", size, 3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.3, 2.0))
    return Teacher(torch.nn.Identity(), meta, "a")


def test_normalisation_against_the_formula():
    """normalize: (x - mean) / std per channel; denormalize inverts it; pixel bounds are
    the images 0 and 1 normalised; the input's dtype is kept."""
    t = teacher()
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = torch.tensor([0.5, 0.25, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.3, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    n = t.normalize(x)
    assert n.dtype == torch.float64 and torch.equal(n, (x - mean) / std)
    assert torch.equal(t.denormalize(n), n * std + mean)
    low, high = t.pixel_bounds(x)
    assert low.shape == (1, 3, 1, 1)
    assert torch.equal(low, -mean / std) and torch.equal(high, (1 - mean) / std)
    assert low.flatten().tolist()[::2] == [-1.0, 0.0]
    assert high.flatten().tolist()[::2] == [1.0, 0.5]
    mean_, std_ = t._stats(x)
    assert mean_.dtype == torch.float64 and std_.dtype == torch.float64
    assert torch.equal(std_, std) and torch.equal(mean_, mean)


def test_prepare_resizes_then_normalises():
    """Another size: antialiased bilinear resize to the input size first; the same size:
    only normalised."""
    t = teacher(size=4)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    resized = F.interpolate(x, size=(4, 4), mode="bilinear", antialias=True,
                            align_corners=False)
    assert torch.equal(t.prepare(x), t.normalize(resized))
    y = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(t.prepare(y), t.normalize(y))
    z = torch.rand(1, 3, 4, 6, generator=torch.Generator().manual_seed(3))
    assert t.prepare(z).shape == (1, 3, 4, 4)


# --------------------------------------------------------------------------- registry


def test_registry_container():
    """Membership, iteration in insertion order, length, natural names, patterns."""
    recs = {n: PriorSpec(n, "s", factory=int) for n in ("b10", "b9", "a", "c-x")}
    reg = Registry("prior", recs)
    assert reg.kind == "prior" and len(reg) == 4
    assert "a" in reg and "z" not in reg
    assert [r.name for r in reg] == ["b10", "b9", "a", "c-x"]
    assert reg.names() == ["a", "b9", "b10", "c-x"]
    assert reg.get("b9") is recs["b9"]
    assert [r.name for r in reg.list()] == ["a", "b9", "b10", "c-x"]
    assert [r.name for r in reg.list(include="b*")] == ["b9", "b10"]
    assert [r.name for r in reg.list(include=["a", "c*"], exclude="c-*")] == ["a"]
    assert [r.name for r in reg.list(exclude=("b1*", "A"))] == ["a", "b9", "c-x"]
    assert [r.name for r in reg.list(include="B*")] == []   # case-sensitive
    with pytest.raises(InvkitError) as err:
        reg.get("b")
    assert str(err.value) == ("unknown prior 'b'; did you mean: b9, b10? "
                              "(valid: a, b10, b9, c-x)")
    assert err.value.__suppress_context__


def test_registry_natural_key_and_patterns():
    assert natural_key("ab12c") == ((1, "ab"), (0, 12, "12"), (1, "c"))
    assert natural_key("") == ()
    assert _patterns(None) == [] and _patterns("a*") == ["a*"]
    assert _patterns(("a", "b")) == ["a", "b"]


class Records:
    def __init__(self, *records):
        self.records = records

    @hookimpl
    def invkit_priors(self):
        return self.records


def manager(*plugins_) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("invkit")
    pm.add_hookspecs(hookspecs)
    for name, plugin in plugins_:
        pm.register(plugin, name=name)
    return pm


def test_registry_collects_tags_and_checks(monkeypatch):
    """Each record tagged with its plugin; a plugin returning a wrong type is skipped with
    a warning naming it; nothing returned is no records."""
    monkeypatch.delenv("INVKIT_STRICT_PLUGINS", raising=False)
    p = PriorSpec("p", "s", factory=int, provider="ignored")
    pm = manager(("one", Records(p)), ("bad", Records(PriorSpec("q", "s", factory=int), "x")),
                 ("none", Records()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = registry("prior", pm)
    assert [str(w.message) for w in caught] == [
        "plugin 'bad' failed to run invkit_priors: TypeError: invkit_priors returned 'x', "
        "not a PriorSpec"]
    assert reg.names() == ["p"] and reg.get("p").provider == "one" and reg.kind == "prior"
    assert reg.get("p") == PriorSpec("p", "s", factory=int, provider="one")
    assert len(registry("teacher", pm)) == 0


def test_registry_conflict_names_both_plugins():
    pm = manager(("first", Records(PriorSpec("p", "s", factory=int))),
                 ("second", Records(PriorSpec("p", "t", factory=int))))
    with pytest.raises(PluginConflict) as err:
        registry("prior", pm)
    assert str(err.value) == ("prior 'p' is registered twice: by plugin 'first' and by "
                              "plugin 'second'")


def test_registry_uses_the_process_manager_by_default():
    assert registry("prior").get("tv-l2").provider == "invkit.priors"


# --------------------------------------------------------------------------- invkit API


def test_lazy_names_resolve_to_their_modules(monkeypatch):
    """Each lazy name is its module's object, cached in the package after first use."""
    for name, module in invkit._LAZY.items():
        monkeypatch.delitem(vars(invkit), name, raising=False)
        value = getattr(invkit, name)
        assert value is getattr(importlib.import_module(module), name)
        assert vars(invkit)[name] is value
    assert len(invkit._LAZY) == 24
    for name in invkit.__all__:
        assert getattr(invkit, name) is not None


def test_unknown_attribute_message():
    with pytest.raises(AttributeError) as err:
        invkit.nope  # noqa: B018
    assert str(err.value) == "module 'invkit' has no attribute 'nope'"


# --------------------------------------------------------------------------- CLI


class Exit3(InvkitError):
    exit_code = 3


def group_with(callback) -> click.Group:
    @click.group(cls=InvkitGroup)
    def cli():
        pass

    cli.command(name="go")(callback)
    return cli


def test_invkit_errors_are_one_line_with_their_exit_code():
    """An InvkitError in a command: "Error: <message>" and the error's own exit code."""
    def fail():
        raise Exit3("it broke")

    result = CliRunner().invoke(group_with(fail), ["go"])
    assert (result.exit_code, result.output) == (3, "Error: it broke\n")

    def fail2():
        raise InvkitError("plain")

    result = CliRunner().invoke(group_with(fail2), ["go"])
    assert (result.exit_code, result.output) == (2, "Error: plain\n")


def test_plugin_warnings_are_warning_lines_on_stderr():
    """A plugin warning inside a command: one "Warning:" line on stderr; it still runs."""
    def warn():
        warnings.warn("plugin 'x' failed to load: E: y", PluginWarning, stacklevel=1)
        click.echo("done")

    result = CliRunner().invoke(group_with(warn), ["go"])
    assert result.exit_code == 0
    assert (result.stdout, result.stderr) == (
        "done\n", "Warning: plugin 'x' failed to load: E: y\n")


def test_plugin_warnings_as_lines_restores_the_warning_machinery(capsys):
    before = warnings.showwarning
    with plugin_warnings_as_lines():
        assert warnings.showwarning is not before
        for _ in range(2):  # "default": shown once per place
            warnings.warn("once", PluginWarning, stacklevel=1)
    assert warnings.showwarning is before
    assert capsys.readouterr().err == "Warning: once\n"


def test_make_cli_commands_and_short_help(invoke):
    """Every top-level command is mounted; -h works like --help."""
    cli = make_cli()
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == [
        "distill", "eval", "extend", "methods", "plugins", "priors", "prune", "run",
        "schedules", "teachers", "verifiers"]
    assert invoke("--version").output == f"invkit, version {invkit.__version__}\n"
    assert isinstance(cli, InvkitGroup) and isinstance(cli.commands["run"], RunGroup)
    assert invoke("-h").output == invoke("--help").output
    assert invoke("run", "-h").output.startswith("Usage: cli run [OPTIONS] COMMAND [ARGS]...")


def test_run_group_lists_and_refuses_methods(invoke):
    """Methods in natural order; an unknown one: exit 2 with the valid choices."""
    group = make_cli().commands["run"]
    ctx = click.Context(group)
    assert group.list_commands(ctx) == ["deepinversion", "fast", "pii"]
    assert group.get_command(ctx, "nope") is None
    assert group.get_command(ctx, "pii").name == "pii"
    result = invoke("run", "deepinv")
    assert result.exit_code == 2
    assert result.output == ("Error: unknown method 'deepinv'; did you mean: deepinversion? "
                             "(valid: deepinversion, fast, pii)\n")
    result = invoke("run", "--nope")
    assert result.exit_code == 2 and result.output.endswith(
        "Error: No such option '--nope'.\n")
    assert invoke("run").exit_code == 2


def test_main_version_skips_building_the_cli(monkeypatch, capsys):
    """--version alone (from argv or sys.argv) answers without plugins."""
    import invkit.cli as cli_module

    monkeypatch.setattr(cli_module, "make_cli", lambda: 1 / 0)
    main(["--version"])
    assert capsys.readouterr().out == f"invkit, version {invkit.__version__}\n"
    monkeypatch.setattr(sys, "argv", ["invkit", "--version"])
    main()
    assert capsys.readouterr().out == f"invkit, version {invkit.__version__}\n"


def test_main_reports_errors_while_building(monkeypatch, capsys):
    """An InvkitError while building the commands: one Error line, its exit code."""
    import invkit.cli as cli_module

    def broken():
        raise Exit3("conflict")

    monkeypatch.setattr(cli_module, "make_cli", broken)
    with pytest.raises(SystemExit) as exited:
        main(["priors", "list"])
    assert exited.value.code == 3
    assert capsys.readouterr().err == "Error: conflict\n"


def test_main_runs_the_cli_as_invkit(capsys):
    """The program name in usage messages is "invkit"; a good command exits 0."""
    with pytest.raises(SystemExit) as exited:
        main(["--bad-option"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("Usage: invkit [OPTIONS] COMMAND [ARGS]...")
    with pytest.raises(SystemExit) as exited:
        main(["plugins", "--json"])
    assert exited.value.code == 0
    assert '"name": "invkit.priors"' in capsys.readouterr().out


def test_unknown_name_messages_for_each_kind_of_choice_list():
    """The whole message: no hint without a near name, an empty registry, a long list."""
    from invkit.errors import unknown

    assert str(unknown("prior", "zzz", ["l2", "tv-l1"])) == (
        "unknown prior 'zzz' (valid: l2, tv-l1)")
    assert str(unknown("verifier", "v", [])) == (
        "unknown verifier 'v' (no verifiers are registered: see 'invkit plugins')")
    many = [f"net{i}" for i in range(31)]
    assert str(unknown("teacher", "qqq", many)) == (
        "unknown teacher 'qqq' (31 valid names: see 'invkit teachers list')")
    assert str(unknown("teacher", "qqq", many[:30])).endswith(", net9)")
