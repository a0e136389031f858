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

import contextlib
import functools
from collections.abc import Sequence
from pathlib import Path

import click

from invkit.errors import InvkitError
from invkit.objective import PriorRequest, merge_requests, parse_prior, set_weight
from invkit.validate import finite_float


class FiniteFloat(click.ParamType):
    """A float option that must be finite, optionally bounded: the CLI's only float type.

    NaN and infinities are refused with an :class:`~invkit.errors.InvkitError` naming the
    option (one ``Error:`` line; the rule is :func:`invkit.validate.finite_float`).
    ``minimum``/``maximum`` are inclusive; ``positive`` requires ``> 0``.

    Example::

        @click.option("--temperature", type=FiniteFloat(positive=True), default=4.0)
        @click.option("--r-feature", type=FiniteFloat(minimum=0), default=None)
    """

    name = "float"

    def __init__(self, minimum: float | None = None, maximum: float | None = None,
                 positive: bool = False):
        self.minimum, self.maximum, self.positive = minimum, maximum, positive

    def convert(self, value, param, ctx):
        # An InvkitError, not click's usage error: the CLI shows one "Error:" line,
        # like every other refused input (e.g. "--temperature=inf is not a finite number").
        label = max(param.opts, key=len) if param is not None and param.opts else "value"
        with contextlib.suppress(TypeError, ValueError):
            value = float(value)  # shown as Python writes it: 0 -> 0.0, 1e999 -> inf
        return finite_float(value, label, minimum=self.minimum, maximum=self.maximum,
                            positive=self.positive)

    def get_metavar(self, param, ctx=None):
        return "FLOAT"

    def __repr__(self):
        return "FiniteFloat"


class OutputDir(click.Path):
    """An output directory option: a path, never empty (``--output ''`` would otherwise
    mean the current directory, since ``Path('')`` is ``.``).

    Example::

        @click.option("--output", "-o", type=OutputDir(), default=None)
    """

    def __init__(self):
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            label = max(param.opts, key=len) if param is not None and param.opts else "--output"
            raise InvkitError(f"the output path is empty: pass {label} DIR")
        return super().convert(value, param, ctx)


def complete_names(kind: str):
    """Shell completion of registered names of ``kind`` (teacher, prior, ...).

    Example:
        >>> [c.value for c in complete_names("prior")(None, None, "tv")]
        ['tv-l1', 'tv-l2']
    """

    def complete(ctx, param, incomplete: str):
        from click.shell_completion import CompletionItem

        from invkit.registry import registry

        return [CompletionItem(r.name, help=r.summary) for r in registry(kind)
                if r.name.startswith(incomplete)]

    return complete


def teacher_options(command):
    """``--teacher``, ``--arch`` (alias ``--arch-name``/``--arch_name``), ``--weights``,
    ``--trust-checkpoint``."""
    decorators = [
        click.option("--teacher", "teacher", default=None, metavar="SPEC",
                     shell_complete=complete_names("teacher"),
                     help="Teacher: a registered name, torchvision:NAME or checkpoint:PATH "
                          "(see 'invkit teachers list')."),
        click.option("--arch", "--arch-name", "--arch_name", "arch", default=None,
                     shell_complete=complete_names("teacher"),
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
                     shell_complete=complete_names("prior"),
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
