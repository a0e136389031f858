"""Shared fixtures: inline plugin registration (no installation needed) and a CLI runner."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from invkit.cli import make_cli
from invkit.plugins import get_plugin_manager


@pytest.fixture
def register_plugin():
    """Register plugins inline for one test; they are unregistered afterwards.

    Example:
        def test_x(register_plugin):
            register_plugin(MyPlugin(), "my-plugin")
    """
    pm = get_plugin_manager()
    names: list[str] = []

    def register(plugin, name: str):
        pm.register(plugin, name=name)
        names.append(name)
        return plugin

    try:
        yield register
    finally:
        for name in names:
            pm.unregister(name=name)


@pytest.fixture
def invoke():
    """Run the CLI in-process: ``invoke("priors", "list")`` returns click's Result."""

    def run(*args: str, **kwargs):
        return CliRunner().invoke(make_cli(), list(args), catch_exceptions=False, **kwargs)

    return run
