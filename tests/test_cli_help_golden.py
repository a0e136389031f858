"""Goldens of every command's ``--help`` (h2's group): each option's name, aliases, type,
metavar, default and help text, and each command's own help, pinned character by character.

A dropped option, a changed default or ``show_default``, a ``Choice`` or range that changed,
or a reworded help line changes these pages, so the tests fail on it.
"""

from __future__ import annotations

import pytest

from tests.golden import assert_golden

PAGES = [
    (),
    ("run",),
    ("run", "deepinversion"),
    ("run", "fast"),
    ("run", "pii"),
    ("eval",),
    ("distill",),
    ("prune",),
    ("extend",),
    ("plugins",),
    ("teachers",),
    ("teachers", "list"),
    ("teachers", "show"),
    ("priors",),
    ("priors", "list"),
    ("priors", "show"),
    ("schedules",),
    ("schedules", "list"),
    ("schedules", "show"),
    ("verifiers",),
    ("verifiers", "list"),
    ("verifiers", "show"),
    ("methods",),
    ("methods", "list"),
    ("methods", "show"),
]


@pytest.mark.parametrize("words", PAGES, ids=lambda w: "-".join(w) or "invkit")
def test_help_page_golden(invoke, monkeypatch, words):
    """``invkit WORDS --help`` at 80 columns, whole page; exit code 0."""
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(*words, "--help")
    assert result.exit_code == 0, result.output
    assert_golden("cli-help-" + ("-".join(words) or "invkit"), result.output)


@pytest.mark.parametrize("words", [("run", "deepinversion"), ("eval",), ()])
def test_short_help_flag_is_the_same_page(invoke, monkeypatch, words):
    """``-h`` is an alias of ``--help`` (context_settings help_option_names)."""
    monkeypatch.setenv("COLUMNS", "80")
    assert invoke(*words, "-h").output == invoke(*words, "--help").output
