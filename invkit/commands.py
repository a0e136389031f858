"""Built-in top-level commands contributed through the ``invkit_commands`` hook."""

from __future__ import annotations

from invkit.hookspecs import hookimpl


@hookimpl
def invkit_commands(cli):
    """``invkit eval`` and ``invkit distill`` (see :mod:`invkit.distill`)."""
