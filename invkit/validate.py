"""The one rule for user-given numbers: finite, and within the bounds the caller states.

Every float a user can set goes through :func:`finite_float`: CLI options (through
:class:`invkit.cli.options.FiniteFloat`), prior/schedule/verifier options
(:meth:`invkit.specs.Option.parse`), ``--prior`` weights and shorthand weight flags
(:mod:`invkit.objective`) and :class:`invkit.distill.DistillConfig`. NaN and
infinities are refused everywhere: they only ever produce NaN images or students.

Example:
    >>> finite_float("0.5", "--temperature", positive=True)
    0.5
    >>> finite_float("nan", "--r-feature")
    Traceback (most recent call last):
    invkit.errors.InvkitError: --r-feature=nan is not a finite number
"""

from __future__ import annotations

import math
from typing import Any

from invkit.errors import InvkitError


def finite_float(value: Any, name: str, *, minimum: float | None = None,
                 maximum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float, or an :class:`InvkitError` naming ``name`` and the rule.

    ``minimum``/``maximum`` are inclusive bounds; ``positive`` requires ``> 0``.
    Booleans are refused (``True`` is not a weight). An empty ``name`` gives messages
    about the value alone (``"nan is not a finite number"``), for callers that name it.

    Example:
        >>> finite_float(3, "lr", positive=True)
        3.0
        >>> finite_float("-1", "weight decay", minimum=0)
        Traceback (most recent call last):
        invkit.errors.InvkitError: weight decay=-1 must be at least 0
    """
    shown = value if isinstance(value, str) else repr(value)
    shown = f"{name}={shown}" if name else shown
    if isinstance(value, bool):
        raise InvkitError(f"{shown} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvkitError(f"{shown} is not a number") from None
    if not math.isfinite(number):
        raise InvkitError(f"{shown} is not a finite number")
    if positive and not number > 0:
        raise InvkitError(f"{shown} must be positive")
    if minimum is not None and number < minimum:
        raise InvkitError(f"{shown} must be at least {minimum:g}")
    if maximum is not None and number > maximum:
        raise InvkitError(f"{shown} must be at most {maximum:g}")
    return number


__all__ = ["finite_float"]
