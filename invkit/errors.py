"""Errors a user can cause. The CLI turns each into one line and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InvkitError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    Example:
        >>> raise InvkitError("unknown prior 'tv'; did you mean: tv-l1, tv-l2")
        Traceback (most recent call last):
        invkit.errors.InvkitError: unknown prior 'tv'; did you mean: tv-l1, tv-l2
    """

    exit_code = 2


class PluginConflict(InvkitError):
    """Two plugins registered the same name for the same kind of record."""


def closest(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The valid names nearest to ``name``, best first (for "did you mean")."""
    choices = list(choices)
    near = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not near:
        near = [c for c in choices if name.lower() in c.lower()][:n]
    return near


def unknown(kind: str, name: str, choices: Iterable[str]) -> InvkitError:
    """An error for an unknown ``kind`` named ``name``, listing the closest valid choices.

    Example:
        >>> str(unknown("prior", "tv", ["tv-l1", "tv-l2", "l2"]))
        "unknown prior 'tv'; did you mean: tv-l2, tv-l1? (valid: l2, tv-l1, tv-l2)"
    """
    choices = sorted(choices)
    near = closest(name, choices)
    hint = f"; did you mean: {', '.join(near)}?" if near else ""
    if not choices:
        valid = f" (no {kind}s are registered: see 'invkit plugins')"
    elif len(choices) <= 30:
        valid = f" (valid: {', '.join(choices)})"
    else:
        valid = f" ({len(choices)} valid names: see 'invkit {kind}s list')"
    return InvkitError(f"unknown {kind} {name!r}{hint}{valid}")
