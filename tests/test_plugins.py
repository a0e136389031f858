"""The plugin system: every hook through an inline plugin, conflicts, broken plugins."""

from __future__ import annotations

import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import torch
from torch import nn

from invkit import hookimpl, hookspecs
from invkit.errors import InvkitError, PluginConflict
from invkit.methods import option
from invkit.objective import Prior
from invkit.plugins import PluginWarning, get_plugin_manager, load_entrypoints
from invkit.registry import registry
from invkit.specs import (
    MethodSpec, Option, PriorSpec, ScheduleSpec, Stage, Teacher, TeacherMeta, TeacherSpec,
    VerifierSpec,
)


class Brightness(Prior):
    name = "brightness"

    def __init__(self, target: float = 0.5):
        super().__init__(target=target)
        self.target = target

    def __call__(self, step):
        return (step.inputs.mean() - self.target) ** 2


def build_tiny(weights=None, **_):
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(4, 3)).eval()
    return Teacher(module, TeacherMeta("tiny", input_size=8, num_classes=3), "tiny")


@dataclass(frozen=True)
class EchoOptions:
    times: int = option(1, "how many hellos", min=1)


class EchoGenerator:
    def __init__(self, teacher, objective, *, config, student=None, verifier=None):
        self.config = config


class EveryHook:
    """One inline plugin implementing every hook."""

    @hookimpl
    def invkit_teachers(self):
        yield TeacherSpec("tiny-test", "a tiny test net", factory=build_tiny, source="test",
                          input_size=8, num_classes=3)

    @hookimpl
    def invkit_priors(self):
        yield PriorSpec("brightness", "squared distance of mean pixel to a target",
                        factory=Brightness, default_weight=0.1,
                        options=(Option("target", float, 0.5, "target mean"),))

    @hookimpl
    def invkit_schedules(self):
        yield ScheduleSpec("two-stage-test", "a test plan", kind="plan",
                           factory=lambda: (Stage(10, 2), Stage(5)))

    @hookimpl
    def invkit_verifiers(self):
        yield VerifierSpec("always-right", "a verifier that agrees",
                           factory=lambda network: (lambda images, targets: {"top1": 1.0}))

    @hookimpl
    def invkit_methods(self):
        yield MethodSpec("echo-test", "a method that says hello", factory=EchoGenerator,
                         options=EchoOptions, default_priors=("cross-entropy",))

    @hookimpl
    def invkit_commands(self, cli):
        @cli.command(name="hello-test")
        def hello():
            """A plugin-contributed command."""
            click.echo("hi from a plugin")


def test_every_hook_is_exercised_by_an_inline_plugin():
    hooks = {name for name in dir(hookspecs) if name.startswith("invkit_")}
    implemented = {name for name in dir(EveryHook) if name.startswith("invkit_")}
    assert hooks == implemented


@pytest.mark.parametrize("kind,name", [
    ("teacher", "tiny-test"), ("prior", "brightness"), ("schedule", "two-stage-test"),
    ("verifier", "always-right"), ("method", "echo-test"),
])
def test_inline_records_reach_the_registry_with_provider(register_plugin, kind, name):
    register_plugin(EveryHook(), "every-hook")
    record = registry(kind).get(name)
    assert record.provider == "every-hook"


def test_inline_records_are_built_and_used(register_plugin):
    register_plugin(EveryHook(), "every-hook")
    teacher = registry("teacher").get("tiny-test").factory()
    assert teacher.module(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
    assert registry("schedule").get("two-stage-test").factory() == (Stage(10, 2), Stage(5))
    verify = registry("verifier").get("always-right").factory(teacher)
    assert verify(torch.zeros(1, 3, 8, 8), torch.zeros(1)) == {"top1": 1.0}


def test_inline_method_and_command_appear_in_the_cli(register_plugin, invoke):
    register_plugin(EveryHook(), "every-hook")
    result = invoke("run", "echo-test", "--teacher", "tiny-test", "--times", "2", "--dry-run")
    assert '"times": 2' in result.output, result.output
    assert "echo-test" in invoke("run", "--help").output
    assert "hi from a plugin" in invoke("hello-test").output
    assert "echo-test" in invoke("methods", "list").output


def test_plugins_command_lists_hooks_and_versions(register_plugin, invoke):
    register_plugin(EveryHook(), "every-hook")
    rows = json.loads(invoke("plugins", "--json").output)
    by_name = {row["name"]: row for row in rows}
    assert by_name["every-hook"]["hooks"] == sorted(
        n for n in dir(hookspecs) if n.startswith("invkit_"))
    assert by_name["invkit.priors"]["hooks"] == ["invkit_priors"]
    assert re.match(r"\d+\.\d+", by_name["invkit.priors"]["version"])


def test_name_conflict_names_both_providers(register_plugin):
    class Clash:
        @hookimpl
        def invkit_priors(self):
            yield PriorSpec("tv-l2", "a second tv-l2", factory=Brightness)

    register_plugin(Clash(), "clashing-plugin")
    with pytest.raises(PluginConflict, match="'invkit.priors'.*'clashing-plugin'"):
        registry("prior")


def test_name_conflict_is_one_line_exit_2_in_the_cli(register_plugin, invoke):
    class Clash:
        @hookimpl
        def invkit_priors(self):
            yield PriorSpec("tv-l2", "a second tv-l2", factory=Brightness)

    register_plugin(Clash(), "clashing-plugin")
    result = invoke("priors", "list")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "clashing-plugin" in result.output


class Raises:
    @hookimpl
    def invkit_priors(self):
        raise RuntimeError("boom")


def test_plugin_raising_in_a_hook_is_a_warning_and_the_rest_still_works(register_plugin):
    register_plugin(Raises(), "raising-plugin")
    with pytest.warns(PluginWarning, match="raising-plugin.*RuntimeError: boom"):
        priors = registry("prior")
    assert "tv-l2" in priors


def test_plugin_returning_the_wrong_type_is_reported(register_plugin):
    class WrongType:
        @hookimpl
        def invkit_teachers(self):
            return ["not a spec"]

    register_plugin(WrongType(), "wrong-type")
    with pytest.warns(PluginWarning, match="wrong-type.*not a TeacherSpec"):
        registry("teacher")


def test_strict_mode_makes_broken_plugins_fatal(register_plugin, monkeypatch):
    monkeypatch.setenv("INVKIT_STRICT_PLUGINS", "1")
    register_plugin(Raises(), "raising-plugin")
    # An InvkitError (BrokenPlugin): the CLI shows it as one Error line naming the plugin.
    with pytest.raises(InvkitError, match="raising-plugin"):
        registry("prior")


def test_broken_plugin_warning_in_the_cli_is_one_line(register_plugin, invoke):
    register_plugin(Raises(), "raising-plugin")
    result = invoke("priors", "list")
    assert result.exit_code == 0
    assert "Warning: plugin 'raising-plugin' failed to run invkit_priors" in result.output
    assert "Traceback" not in result.output and "tv-l2" in result.output


class FakeEntryPoint:
    def __init__(self, name, target):
        self.name, self.target, self.dist = name, target, None

    def load(self):
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def test_entry_point_that_fails_to_import_is_a_warning(monkeypatch):
    good = types.ModuleType("good_plugin")
    good.invkit_priors = hookimpl(lambda: [PriorSpec("ep-prior", "from an entry point",
                                                     factory=Brightness)])
    eps = [FakeEntryPoint("broken-ep", ImportError("No module named 'missing_dep'")),
           FakeEntryPoint("good-ep", good)]
    monkeypatch.setattr("invkit.plugins.entry_points", lambda group: eps)
    pm = get_plugin_manager()
    try:
        with pytest.warns(PluginWarning, match="broken-ep.*missing_dep"):
            load_entrypoints(pm)
        assert registry("prior").get("ep-prior").provider == "good-ep"
    finally:
        pm.unregister(name="good-ep")


def test_entry_point_autoloading_can_be_disabled(tmp_path):
    import subprocess

    code = ("from invkit.plugins import get_plugin_manager as g;"
            "print(sorted(n for n, _ in g().list_name_plugin()))")
    env = {"INVKIT_NO_ENTRYPOINTS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout
    # The bundled DeepInversion is a built-in: it stays (third-party entry points go;
    # see tests/test_reliability.py for one that is skipped).
    assert "deepinversion" in out and "invkit.priors" in out
    env["INVKIT_NO_ENTRYPOINTS"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout
    assert "deepinversion" in out


def test_deepinversion_is_loaded_through_the_entry_point_group():
    from importlib import metadata

    eps = {ep.name: ep.value for ep in metadata.entry_points(group="invkit")}
    assert eps["deepinversion"] == "invkit_plugins.deepinversion"
    assert get_plugin_manager().get_plugin("deepinversion") is not None


def test_entry_points_are_read_as_importlib_metadata_reads_them(tmp_path, monkeypatch):
    from importlib import metadata

    from invkit.plugins import entry_points

    def dist(folder, text, where=tmp_path):
        (where / folder).mkdir(parents=True)
        (where / folder / "entry_points.txt").write_text(text)

    dist("first_plugin-1.2.dist-info", "# a comment\n[console_scripts]\nx = a:b\n\n"
         "[invkit]\nfirst = first_plugin.core:Plugin.hooks [extra]\n")
    later = tmp_path / "later"  # the same distribution again, later on the path: ignored
    dist("First.Plugin-9.0.dist-info", "[invkit]\nshadowed = nowhere\n", later)
    dist("old_style-0.3-py3.11.egg-info", "[invkit]\nold = old_style\n")
    dist("dev.egg-info", "[invkit]\ndev = dev_plugin\n")
    (tmp_path / "dev.egg-info" / "PKG-INFO").write_text("Name: dev\nVersion: 2.0b1\n\nbody\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path / "missing"), str(later),
                                      *sys.path])
    ours = [(ep.name, ep.value) for ep in entry_points("invkit")]
    stdlib = [(ep.name, ep.module + (f":{ep.attr}" if ep.attr else ""))  # without [extra]
              for ep in metadata.entry_points(group="invkit")]
    assert sorted(ours) == sorted(stdlib)
    mine = {ep.name: (ep.value, ep.dist, ep.version) for ep in entry_points("invkit")}
    assert mine["first"] == ("first_plugin.core:Plugin.hooks", "first_plugin", "1.2")
    assert mine["old"] == ("old_style", "old_style", "0.3")
    assert mine["dev"] == ("dev_plugin", "dev", "2.0b1")
    assert "shadowed" not in mine and "x" not in mine


def test_an_entry_point_loads_a_module_attribute():
    from invkit.plugins import EntryPoint

    assert EntryPoint("p", "invkit.plugins:EntryPoint.load", "d", "1").load() is EntryPoint.load
    import invkit.priors

    assert EntryPoint("p", "invkit.priors", "d", "1").load() is invkit.priors


def test_every_hook_has_a_docstring_with_an_example():
    for name in dir(hookspecs):
        if name.startswith("invkit_"):
            doc = getattr(hookspecs, name).__doc__ or ""
            assert "Example" in doc and "@hookimpl" in doc, name


def test_readme_hook_reference_covers_every_hook():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in dir(hookspecs):
        if name.startswith("invkit_"):
            assert f"`{name}" in readme, name
