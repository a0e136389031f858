"""Plugins, the bundled ones included, use only invkit's public API (``invkit.__all__``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import invkit

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FILES = sorted([*(ROOT / "invkit_plugins").rglob("*.py"), *(ROOT / "examples").rglob("*.py")])


def invkit_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every import of invkit in a file; name '' for ``import X``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "invkit" or node.module.startswith("invkit."):
                found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names
                      if alias.name == "invkit" or alias.name.startswith("invkit.")]
    return found


def test_plugin_files_are_found():
    names = {p.name for p in PLUGIN_FILES}
    assert {"method.py", "bn_stats.py", "__init__.py"} <= names  # the check is not vacuous


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path):
    for module, name in invkit_imports(path):
        assert module == "invkit", f"{path.name} imports {module}: use 'from invkit import ...'"
        assert name in invkit.__all__, f"{path.name} imports invkit.{name}, not in __all__"


def test_every_public_name_resolves():
    missing = [name for name in invkit.__all__ if not hasattr(invkit, name)]
    assert missing == []


def test_import_invkit_does_not_import_torch():
    code = "import sys, invkit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_load_teacher_shows_its_real_signature():
    import inspect

    from invkit.teachers import load_teacher

    assert invkit.load_teacher is load_teacher
    assert "trust_checkpoint" in inspect.signature(invkit.load_teacher).parameters
