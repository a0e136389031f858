"""The plugin manager: built-in plugins, entry-point plugins, and fault tolerance.

Environment switches:

- ``INVKIT_NO_ENTRYPOINTS=1``: do not load plugins from the ``invkit`` entry-point
  group (built-ins still load, the bundled DeepInversion plugin included).
- ``INVKIT_STRICT_PLUGINS=1``: a plugin that fails to import, or raises in a hook,
  is an error instead of a warning (for plugin authors).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pluggy

from invkit import hookspecs
from invkit.errors import InvkitError

ENTRYPOINT_GROUP = "invkit"

# Built-in features are plugins too, registered before any entry point.
BUILTIN_PLUGINS = (
    "invkit.priors",
    "invkit.schedules",
    "invkit.verifiers",
    "invkit.teachers",
    "invkit.commands",
)

#: Plugins shipped in this distribution that are also declared as entry points (the
#: entry-point name, then the module): loaded by name when entry points are disabled.
BUNDLED_PLUGINS = {"deepinversion": "invkit_plugins.deepinversion",
                   "fast": "invkit_plugins.generative",
                   "pii": "invkit_plugins.plugin_inversion"}


class PluginWarning(UserWarning):
    """A plugin failed to load or raised in a hook; the rest of invkit keeps working."""


def strict() -> bool:
    return os.environ.get("INVKIT_STRICT_PLUGINS", "") not in ("", "0")


class BrokenPlugin(InvkitError):
    """Under ``INVKIT_STRICT_PLUGINS``: a plugin failed (one ``Error:`` line naming it)."""


def report_broken(plugin: str, error: BaseException, where: str = "load") -> None:
    """Warn about a broken plugin (or raise :class:`BrokenPlugin`, under
    ``INVKIT_STRICT_PLUGINS``)."""
    detail = " ".join(str(error).split())
    message = f"plugin {plugin!r} failed to {where}: {type(error).__name__}: {detail}"
    if strict():
        raise BrokenPlugin(message + " (INVKIT_STRICT_PLUGINS is set)") from error
    warnings.warn(message, PluginWarning, stacklevel=3)


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use.

    Example:
        >>> pm = get_plugin_manager()
        >>> class MyPlugin:                                 # hook implementations
        ...     pass
        >>> pm.register(MyPlugin(), name="my-plugin")     # e.g. in a test
        'my-plugin'
        >>> _ = pm.unregister(name="my-plugin")
    """
    pm = pluggy.PluginManager("invkit")
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if os.environ.get("INVKIT_NO_ENTRYPOINTS", "") in ("", "0"):
        load_entrypoints(pm)
    else:
        # The bundled methods are built-ins too; normally their entry point (same name)
        # registers them, and with entry points off they must still be there.
        for name, module_name in BUNDLED_PLUGINS.items():
            if pm.get_plugin(name) is None:
                pm.register(importlib.import_module(module_name), name=name)
    return pm


@dataclass(frozen=True)
class EntryPoint:
    """One ``name = module:attr`` line of a distribution's ``entry_points.txt``."""

    name: str
    value: str
    dist: str
    version: str

    def load(self):
        module_name, _, attr = self.value.partition(":")
        target = importlib.import_module(module_name.strip())
        for part in filter(None, attr.strip().split(".")):
            target = getattr(target, part)
        return target


_METADATA_DIR = re.compile(r"^([^-]+)(?:-([^-]+))?.*\.(?:dist|egg)-info$", re.IGNORECASE)


def entry_points(group: str = ENTRYPOINT_GROUP) -> list[EntryPoint]:
    """The entry points of ``group`` in the distributions on ``sys.path``.

    Read from each ``*.dist-info`` / ``*.egg-info`` directory's ``entry_points.txt`` with
    importlib.metadata's rules (a distribution found again later on the path is ignored),
    but without importing importlib.metadata, which alone costs a fifth of the start-up
    budget of ``invkit priors list`` (it imports email, zipfile and csv).

    Example:
        >>> {ep.name: ep.value for ep in entry_points("invkit")}["deepinversion"]
        'invkit_plugins.deepinversion'
    """
    found, seen = [], set()
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # a zip file or a missing directory: no installed metadata here
            continue
        for name in names:
            match = _METADATA_DIR.match(name)
            if not match:
                continue
            dist = re.sub(r"[-_.]+", "_", match.group(1)).lower()
            if dist in seen:
                continue
            seen.add(dist)
            path = Path(entry or ".", name, "entry_points.txt")
            version = match.group(2) or _header(path.with_name("PKG-INFO"), "Version")
            found += _parse_entry_points(path, group, match.group(1), version)
    return found


def _header(path: Path, key: str) -> str:
    """A ``Key: value`` header of a metadata file (``""`` when missing)."""
    try:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    break  # the headers end at the first blank line
                if line.lower().startswith(key.lower() + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _parse_entry_points(path: Path, group: str, dist: str, version: str) -> list[EntryPoint]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    section, found = None, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif section == group and "=" in line:
            name, _, value = line.partition("=")
            value = value.split("[")[0].strip()  # drop an "[extra]" marker
            found.append(EntryPoint(name.strip(), value, dist, version))
    return found


def load_entrypoints(pm: pluggy.PluginManager) -> None:
    """Register every ``invkit`` entry point, warning about (not failing on) broken ones."""
    for ep in entry_points(ENTRYPOINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as error:  # noqa: BLE001 - any plugin bug must not break invkit
            report_broken(ep.name, error)
            continue


def call_each(pm: pluggy.PluginManager, hook_name: str, consume=list, **kwargs):
    """Call a hook through pluggy one plugin at a time: ``(plugin name, consumed result)``.

    Each call goes through pluggy's hook caller (``pm.subset_hook_caller``), limited to one
    plugin, so a plugin that raises (in the hook, or while ``consume`` reads what it
    returned, e.g. a generator) is reported as broken and skipped; the others still count.

    Example:
        >>> [name for name, _ in call_each(get_plugin_manager(), "invkit_priors")][:2]
        ['invkit.priors', 'deepinversion']
    """
    hook = getattr(pm.hook, hook_name)
    plugins = [impl.plugin for impl in hook.get_hookimpls()]  # registration order
    for plugin in plugins:
        name = pm.get_name(plugin) or repr(plugin)
        others = [p for p in plugins if p is not plugin]
        caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
        try:
            results = caller(**kwargs)
            value = consume(results[0] if results else None)
        except Exception as error:  # noqa: BLE001 - a broken plugin must not break invkit
            report_broken(name, error, where=f"run {hook_name}")
            continue
        yield name, value


def call_factory(factory, what: str, provider: str, **kwargs):
    """Call a plugin's factory: its bugs become one line naming the plugin.

    An :class:`~invkit.errors.InvkitError` (a user error the factory reports) passes as it is.

    Example:
        >>> call_factory(lambda: 1 / 0, "prior 'x'", "p")
        Traceback (most recent call last):
        invkit.errors.InvkitError: prior 'x' (from plugin 'p') failed to build: ZeroDivisionError: division by zero
    """
    from invkit.errors import InvkitError

    try:
        return factory(**kwargs)
    except InvkitError:
        raise
    except Exception as error:  # noqa: BLE001 - a plugin's bug must not print a traceback
        text = " ".join(str(error).split()) or "no message"
        text = text if len(text) <= 200 else text[:197] + "..."
        raise InvkitError(f"{what} (from plugin {provider!r}) failed to build: "
                          f"{type(error).__name__}: {text}") from None


def plugin_version(name: str, installed: dict[str, str] | None = None) -> str:
    """The installed version of the distribution that provides plugin ``name``.

    ``installed`` (entry-point name -> version) saves a scan of ``sys.path`` per call.
    """
    if installed is None:
        installed = {ep.name: ep.version for ep in entry_points(ENTRYPOINT_GROUP)}
    if name in installed:
        return installed[name] or "unknown"
    if name.startswith("invkit."):
        from invkit import __version__

        return __version__
    return "-"


def describe_plugins(pm: pluggy.PluginManager | None = None) -> list[dict]:
    """Each registered plugin with its version and the hooks it implements.

    Example:
        >>> [p["name"] for p in describe_plugins()][:2]
        ['invkit.priors', 'invkit.schedules']
    """
    pm = pm or get_plugin_manager()
    installed = {ep.name: ep.version for ep in entry_points(ENTRYPOINT_GROUP)}
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        rows.append({"name": name, "version": plugin_version(name, installed),
                     "hooks": hooks})
    return rows
