"""Click options shared by every method's ``invkit run`` command (one way to do each thing).

Example (a method plugin's command)::

    @click.command()
    @teacher_options
    @prior_options
    def my_method(teacher, arch, weights, trust_checkpoint, prior, no_default_priors, dry_run):
        requests = resolve_prior_requests(DEFAULTS, prior, no_default_priors)
        objective = build_objective(requests)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import click

from invkit.objective import PriorRequest, merge_requests, parse_prior, set_weight


class FiniteFloat(click.ParamType):
    """A float that must be finite (no nan/inf), optionally within [min, max]."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None):
        self.min, self.max = min, max

    def convert(self, value, param, ctx):
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and number < self.min:
            self.fail(f"{value!r} is below the minimum {self.min:g}", param, ctx)
        if self.max is not None and number > self.max:
            self.fail(f"{value!r} is above the maximum {self.max:g}", param, ctx)
        return number


def finite_float(min: float | None = None, max: float | None = None) -> FiniteFloat:
    """The click type of every float option: finite, optionally bounded.

    Example:
        >>> finite_float(min=0).convert("0.5", None, None)
        0.5
    """
    return FiniteFloat(min=min, max=max)


def teacher_options(command):
    """``--teacher``, ``--arch`` (alias ``--arch-name``/``--arch_name``), ``--weights``,
    ``--trust-checkpoint``."""
    decorators = [
        click.option("--teacher", "teacher", default=None, metavar="SPEC",
                     help="Teacher: a registered name, torchvision:NAME or checkpoint:PATH "
                          "(see 'invkit teachers list')."),
        click.option("--arch", "--arch-name", "--arch_name", "arch", default=None,
                     metavar="NAME", help="Architecture (a teacher name); with "
                     "--teacher checkpoint:PATH, the network the file is loaded into."),
        click.option("--weights", default=None, metavar="WEIGHTS",
                     help="none (random init), a torchvision weights name (DEFAULT, "
                          "IMAGENET1K_V2, ...) or a file (.safetensors, .pt, .pth, .pth.tar)."),
        click.option("--trust-checkpoint", is_flag=True,
                     help="Allow full unpickling of checkpoint files (only for files you trust)."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), command)


def prior_options(command):
    """``--prior NAME[:WEIGHT][,key=value...]`` (repeatable), ``--no-default-priors``,
    ``--dry-run``."""
    decorators = [
        click.option("--prior", "prior", multiple=True, metavar="NAME[:W][,k=v...]",
                     callback=_parse_priors,
                     help="Add or override a loss term (repeatable; repeats add up). "
                          "See 'invkit priors list'."),
        click.option("--no-default-priors", is_flag=True,
                     help="Start from no loss terms instead of the method's defaults."),
        click.option("--dry-run", is_flag=True,
                     help="Print the resolved objective and configuration, then exit."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), command)


def _parse_priors(ctx, param, values) -> tuple[PriorRequest, ...]:
    return tuple(parse_prior(v) for v in values)


def resolve_prior_requests(defaults: Sequence[PriorRequest], given: Sequence[PriorRequest],
                           no_default_priors: bool = False,
                           shorthands: dict[str, float | None] | None = None,
                           ) -> list[PriorRequest]:
    """Method defaults, then ``--prior`` entries, then shorthand weight flags.

    ``shorthands`` maps a prior name to the weight a flag such as ``--r-feature`` set
    (``None`` when the flag was not given).
    """
    requests = merge_requests(defaults, given, use_defaults=not no_default_priors)
    for name, weight in (shorthands or {}).items():
        requests = set_weight(requests, name, weight)
    return requests
