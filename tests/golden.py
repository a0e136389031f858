"""Golden files: pin a command's whole output (help, listings, tables, error messages).

A golden test fails on any changed character, so a dropped option, a changed default, a
reworded error or a mangled table is caught, not only the part a substring test looks at.
After an intended change, rewrite the files and review the diff::

    INVKIT_UPDATE_GOLDEN=1 python -m pytest tests/ -k golden
    git diff tests/golden/

Example:
    def test_priors_help(invoke):
        assert_golden("priors-help", invoke("priors", "--help").output)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("INVKIT_UPDATE_GOLDEN") == "1"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def assert_golden(name: str, text: str) -> None:
    """Assert ``text`` equals ``tests/golden/<name>.txt`` (written instead when updating)."""
    assert _NAME.fullmatch(name), f"golden name {name!r}: lower-case letters, digits, -_."
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"no golden file {path}; write it with INVKIT_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"output differs from {path} (INVKIT_UPDATE_GOLDEN=1 rewrites it)"
