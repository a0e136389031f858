"""The plugin manager's exact behaviour: entry-point discovery from metadata files, broken
plugins (warning text, strict mode), one-plugin-at-a-time hook calls, factory errors and
versions. Each check uses its own pluggy manager or a temporary ``sys.path``."""

from __future__ import annotations

import json
import os
import sys
import warnings

import pluggy
import pytest

from invkit import __version__, hookimpl, hookspecs, plugins
from invkit.errors import InvkitError
from invkit.plugins import EntryPoint, PluginWarning


def fresh_pm() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("invkit")
    pm.add_hookspecs(hookspecs)
    return pm


def test_constants():
    """The entry-point group and the built-in/bundled plugin names other code relies on."""
    assert plugins.ENTRYPOINT_GROUP == "invkit"
    assert plugins.BUILTIN_PLUGINS == ("invkit.priors", "invkit.schedules", "invkit.verifiers",
                                       "invkit.teachers", "invkit.commands")
    assert plugins.BUNDLED_PLUGINS == {"deepinversion": "invkit_plugins.deepinversion",
                                       "fast": "invkit_plugins.generative",
                                       "pii": "invkit_plugins.plugin_inversion"}


@pytest.mark.parametrize("value,expected", [
    (None, False), ("", False), ("0", False), ("1", True), ("yes", True), ("00", True)])
def test_strict_switch(monkeypatch, value, expected):
    """INVKIT_STRICT_PLUGINS: unset, empty or "0" is off; anything else is on."""
    if value is None:
        monkeypatch.delenv("INVKIT_STRICT_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("INVKIT_STRICT_PLUGINS", value)
    assert plugins.strict() is expected


def _outer(error):
    _inner(error)  # the line the warning points at (stacklevel=3)


def _inner(error):
    plugins.report_broken("p1", error, where="run x")


def test_report_broken_warns_one_line(monkeypatch):
    """Whitespace in the error collapses; the warning points at the caller's caller."""
    monkeypatch.delenv("INVKIT_STRICT_PLUGINS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _outer(ValueError("bad\n  thing\there"))
        plugins.report_broken("p2", ImportError("x"))
    assert [str(w.message) for w in caught] == [
        "plugin 'p1' failed to run x: ValueError: bad thing here",
        "plugin 'p2' failed to load: ImportError: x"]
    assert all(w.category is PluginWarning for w in caught)
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampoline adds a frame
        assert caught[0].filename == __file__
        assert caught[0].lineno == _outer.__code__.co_firstlineno + 1


def test_report_broken_raises_when_strict(monkeypatch):
    """Strict: BrokenPlugin (an InvkitError, exit code 2) chained to the error."""
    monkeypatch.setenv("INVKIT_STRICT_PLUGINS", "1")
    error = KeyError("k")
    with pytest.raises(plugins.BrokenPlugin) as err:
        plugins.report_broken("p", error, where="build")
    assert str(err.value) == ("plugin 'p' failed to build: KeyError: 'k' "
                              "(INVKIT_STRICT_PLUGINS is set)")
    assert err.value.__cause__ is error
    assert isinstance(err.value, InvkitError) and err.value.exit_code == 2


@pytest.mark.parametrize("flag,bundled", [("1", True), ("yes", True), ("0", False),
                                          ("", False)])
def test_get_plugin_manager_builtins_and_bundled(monkeypatch, flag, bundled):
    """Built-ins first, then the bundled methods, by entry point or (entry points off)
    by name; a fresh manager each time (the cached one is left alone)."""
    monkeypatch.setenv("INVKIT_NO_ENTRYPOINTS", flag)
    pm = plugins.get_plugin_manager.__wrapped__()
    names = [name for name, _ in pm.list_name_plugin()]
    assert names[:8] == ["invkit.priors", "invkit.schedules", "invkit.verifiers",
                         "invkit.teachers", "invkit.commands", "deepinversion", "fast", "pii"]
    assert pm.get_plugin("deepinversion") is sys.modules["invkit_plugins.deepinversion"]
    assert pm.get_plugin("invkit.teachers") is sys.modules["invkit.teachers"]
    assert pm.project_name == "invkit"
    assert pm.hook.invkit_priors.spec is not None
    if bundled:  # entry points off: only the built-ins and the bundled three
        assert len(names) == 8


def test_no_entrypoints_loads_no_third_party_plugin(monkeypatch):
    """With entry points off, entry_points() is never consulted."""
    monkeypatch.setenv("INVKIT_NO_ENTRYPOINTS", "1")
    monkeypatch.setattr(plugins, "entry_points", lambda group="invkit": 1 / 0)
    plugins.get_plugin_manager.__wrapped__()
    monkeypatch.setenv("INVKIT_NO_ENTRYPOINTS", "0")
    with pytest.raises(ZeroDivisionError):
        plugins.get_plugin_manager.__wrapped__()


def test_entry_point_load_follows_dotted_attributes():
    """``module:attr.attr`` resolves attribute by attribute; no attribute: the module."""
    assert EntryPoint("n", "json:JSONDecoder.decode", "d", "1").load() is (
        json.JSONDecoder.decode)
    assert EntryPoint("n", " os.path : join ", "d", "1").load() is os.path.join
    assert EntryPoint("n", "os.path", "d", "1").load() is os.path
    assert EntryPoint("n", "json:decoder.JSONDecoder.decode", "d", "1").load() is (
        json.JSONDecoder.decode)
    assert EntryPoint("n", "os.path:", "d", "1").load() is os.path


ENTRY_POINTS_TXT = """\
# a comment
; another

[console_scripts]
invkit = invkit.cli:main

[ invkit ]
first = pkg.first
; hidden = pkg.hidden
# hidden2 = pkg.hidden
 second = pkg.second:plugin [extra]
not an entry
third=pkg.third:obj.attr
[other]
fourth = pkg.fourth
"""


def _dist(folder, name, text=None, pkg_info=None):
    d = folder / name
    d.mkdir(parents=True)
    if text is not None:
        (d / "entry_points.txt").write_text(text, encoding="utf-8")
    if pkg_info is not None:
        (d / "PKG-INFO").write_text(pkg_info, encoding="utf-8")
    return d


def test_entry_points_read_from_metadata_directories(tmp_path, monkeypatch):
    """dist-info and egg-info folders, versions from the name or PKG-INFO, sections,
    comments, extras, and a distribution found again later on the path ignored."""
    a, b, cwd = tmp_path / "a", tmp_path / "b", tmp_path / "cwd"
    _dist(a, "My.Pkg-1.2.dist-info", ENTRY_POINTS_TXT)
    _dist(a, "zed.egg-info", "[invkit]\nz = zed\n",
          pkg_info="Name: zed\nversion:  3.4 \n\nVersion: 9\n")
    _dist(a, "nothing-1.0.dist-info")                 # no entry_points.txt
    _dist(a, "not-metadata-1.0")
    (a / "file.dist-info.txt").write_text("")
    _dist(b, "my_pkg-2.0.dist-info", "[invkit]\nshadowed = x\n")
    _dist(cwd, "here-0.1.dist-info", "[invkit]\nhere = mod\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", [str(a), str(tmp_path / "missing"), str(b), "",
                                      str(a / "file.dist-info.txt")])
    assert plugins.entry_points() == [
        EntryPoint("first", "pkg.first", "My.Pkg", "1.2"),
        EntryPoint("second", "pkg.second:plugin", "My.Pkg", "1.2"),
        EntryPoint("third", "pkg.third:obj.attr", "My.Pkg", "1.2"),
        EntryPoint("z", "zed", "zed", "3.4"),
        EntryPoint("here", "mod", "here", "0.1"),
    ]
    assert plugins.entry_points("other") == [EntryPoint("fourth", "pkg.fourth", "My.Pkg", "1.2")]
    assert plugins.entry_points("console_scripts")[0].value == "invkit.cli:main"


def test_metadata_dir_pattern():
    """Name and version from a metadata folder's name, any case of the suffix."""
    m = plugins._METADATA_DIR.match
    assert m("foo-1.0.dist-info").groups() == ("foo", "1.0")
    assert m("foo.EGG-INFO").groups() == ("foo", None)
    assert m("foo-1.0-py3.11.egg-info").groups() == ("foo", "1.0")
    assert m("foo-1.0.dist-info.bak") is None
    assert m("foo-1.0") is None


def test_header_reads_one_metadata_field(tmp_path):
    """Case-insensitive key, value after the first colon, headers end at a blank line."""
    path = tmp_path / "PKG-INFO"
    path.write_text("Name: x\nVERSION: 1:2 \nSummary: s\n\nVersion: body\n", encoding="utf-8")
    assert plugins._header(path, "Version") == "1:2"
    assert plugins._header(path, "summary") == "s"
    assert plugins._header(path, "Home") == ""
    assert plugins._header(path, "Versio") == ""
    assert plugins._header(tmp_path / "missing", "Version") == ""
    path.write_text("Name: x\n\nVersion: 1\n", encoding="utf-8")
    assert plugins._header(path, "Version") == ""
    assert plugins._parse_entry_points(tmp_path / "missing", "invkit", "d", "1") == []


class _Good:
    @hookimpl
    def invkit_priors(self):
        return []


class _FakeEP:
    def __init__(self, name, target):
        self.name, self.target = name, target

    def load(self):
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def test_load_entrypoints_skips_known_and_blocked_and_warns_on_broken(monkeypatch):
    """Known names and blocked names are not loaded again; a broken one is one warning and
    the ones after it still load."""
    monkeypatch.delenv("INVKIT_STRICT_PLUGINS", raising=False)
    pm = fresh_pm()
    known, good = _Good(), _Good()
    pm.register(known, name="known")
    pm.set_blocked("blocked")
    eps = [_FakeEP("known", RuntimeError("loaded again")),
           _FakeEP("blocked", RuntimeError("loaded although blocked")),
           _FakeEP("broken", ImportError("no  module\n'x'")), _FakeEP("good", good)]
    seen = []
    monkeypatch.setattr(plugins, "entry_points", lambda group: seen.append(group) or eps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugins.load_entrypoints(pm)
    assert seen == ["invkit"]
    assert [str(w.message) for w in caught] == [
        "plugin 'broken' failed to load: ImportError: no module 'x'"]
    assert pm.get_plugin("known") is known and pm.get_plugin("good") is good
    assert pm.get_plugin("broken") is None


class _Named:
    def __init__(self, value):
        self.value = value

    @hookimpl
    def invkit_priors(self):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


def _gen_then_fail():
    yield 1
    raise ValueError("late")


def test_call_each_calls_one_plugin_at_a_time(monkeypatch):
    """Registration order, the consumed value per plugin; a plugin raising in the hook or
    while its result is consumed is warned about and skipped; no result: consume(None)."""
    monkeypatch.delenv("INVKIT_STRICT_PLUGINS", raising=False)
    pm = fresh_pm()
    pm.register(_Named([1, 2]), name="a")
    pm.register(_Named(RuntimeError("boom")), name="b")
    pm.register(_Named(_gen_then_fail()), name="c")
    pm.register(_Named(None), name="d")
    pm.register(_Named((3,)), name="e")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = list(plugins.call_each(pm, "invkit_priors",
                                     consume=lambda r: None if r is None else list(r)))
    assert got == [("a", [1, 2]), ("d", None), ("e", [3])]
    assert [str(w.message) for w in caught] == [
        "plugin 'b' failed to run invkit_priors: RuntimeError: boom",
        "plugin 'c' failed to run invkit_priors: ValueError: late"]
    assert list(plugins.call_each(pm, "invkit_teachers")) == []
    pm2 = fresh_pm()
    pm2.register(_Named([5]), name="only")
    assert list(plugins.call_each(pm2, "invkit_priors")) == [("only", [5])]


def test_call_each_is_strict_under_the_switch(monkeypatch):
    """INVKIT_STRICT_PLUGINS: the first broken plugin stops the call."""
    monkeypatch.setenv("INVKIT_STRICT_PLUGINS", "1")
    pm = fresh_pm()
    pm.register(_Named(RuntimeError("boom")), name="b")
    with pytest.raises(plugins.BrokenPlugin) as err:
        list(plugins.call_each(pm, "invkit_priors"))
    assert str(err.value) == ("plugin 'b' failed to run invkit_priors: RuntimeError: boom "
                              "(INVKIT_STRICT_PLUGINS is set)")


def test_call_factory_messages():
    """Keyword arguments reach the factory; InvkitError passes unchanged; other errors are
    one line (whitespace collapsed, "no message" when empty, cut to 200 characters)."""
    assert plugins.call_factory(lambda a, b: a - b, "w", "p", a=5, b=2) == 3
    own = InvkitError("user error")
    with pytest.raises(InvkitError) as err:
        plugins.call_factory(lambda: (_ for _ in ()).throw(own), "w", "p")
    assert err.value is own

    def fails(error):
        with pytest.raises(InvkitError) as err:
            plugins.call_factory(lambda: (_ for _ in ()).throw(error), "prior 'x'", "plug")
        assert err.value.__cause__ is None and err.value.__suppress_context__
        return str(err.value)

    head = "prior 'x' (from plugin 'plug') failed to build: "
    assert fails(ValueError(" a \n b ")) == head + "ValueError: a b"
    assert fails(RuntimeError()) == head + "RuntimeError: no message"
    assert fails(ValueError("x" * 200)) == head + "ValueError: " + "x" * 200
    assert fails(ValueError("x" * 201)) == head + "ValueError: " + "x" * 197 + "..."


def test_plugin_version(monkeypatch):
    """An entry point's version ("unknown" when empty), invkit's own for built-ins, "-"
    for an inline plugin; without ``installed`` the entry points are read."""
    installed = {"ep": "1.5", "blank": "", "invkit.x": "7"}
    assert plugins.plugin_version("ep", installed) == "1.5"
    assert plugins.plugin_version("blank", installed) == "unknown"
    assert plugins.plugin_version("invkit.x", installed) == "7"
    assert plugins.plugin_version("invkit.priors", installed) == __version__
    assert plugins.plugin_version("invkitx", installed) == "-"
    assert plugins.plugin_version("inline", {}) == "-"
    monkeypatch.setattr(plugins, "entry_points", lambda group: [
        EntryPoint("ep", "m", "d", "2.0")] if group == "invkit" else [])
    assert plugins.plugin_version("ep") == "2.0"


def test_describe_plugins_of_a_given_manager(monkeypatch):
    """Blocked names are left out; hooks sorted; versions from the entry points."""
    monkeypatch.setattr(plugins, "entry_points", lambda group: [
        EntryPoint("a", "m", "d", "3.1")] if group == "invkit" else [])

    class Two:
        @hookimpl
        def invkit_teachers(self):
            return []

        @hookimpl
        def invkit_methods(self):
            return []

    pm = fresh_pm()
    pm.register(Two(), name="a")
    pm.set_blocked("blocked")
    pm.register(object(), name="invkit.none")
    assert plugins.describe_plugins(pm) == [
        {"name": "a", "version": "3.1", "hooks": ["invkit_methods", "invkit_teachers"]},
        {"name": "invkit.none", "version": __version__, "hooks": []}]
