"""Built-in learning-rate schedules and resolution plans.

Example:
    >>> lr = warmup_cosine(warmup=100)
    >>> [round(lr(i, 2000), 3) for i in (0, 99, 100, 2000)]
    [0.01, 1.0, 1.0, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable

from invkit.hookspecs import hookimpl
from invkit.specs import Option, ScheduleSpec, Stage

LrSchedule = Callable[[int, int], float]


def constant() -> LrSchedule:
    """The base rate at every step."""
    return lambda step, total: 1.0


def warmup_cosine(warmup: int = 100) -> LrSchedule:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``.

    Multiplier at step ``i``: ``(i+1)/warmup`` during warm-up, then
    ``0.5 * (1 + cos(pi * (i - warmup) / (total - warmup)))``.
    """

    def multiplier(step: int, total: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))

    return multiplier


def cosine() -> LrSchedule:
    """Cosine decay from the base rate to 0 over ``total`` steps, no warm-up."""
    return warmup_cosine(warmup=0)


def single_stage(iterations: int = 2000) -> tuple[Stage, ...]:
    """All iterations at full resolution."""
    return (Stage(iterations),)


def scale_plan(stages: tuple[Stage, ...], total: int) -> tuple[Stage, ...]:
    """The same plan with ``total`` iterations, split across stages in the same proportions.

    Example:
        >>> scale_plan((Stage(2000, 2), Stage(1000)), 300)
        (Stage(iterations=200, downsample=2), Stage(iterations=100, downsample=1))
    """
    if total < len(stages):
        raise ValueError(f"{total} iterations cannot cover {len(stages)} stages")
    old = sum(s.iterations for s in stages)
    sizes = [max(1, round(total * s.iterations / old)) for s in stages]
    sizes[-1] = total - sum(sizes[:-1])  # rounding goes to the last stage
    return tuple(Stage(n, s.downsample) for n, s in zip(sizes, stages))


def build_schedule(text: str, kind: str = "lr"):
    """Build a registered schedule from ``NAME[,key=value...]`` (``kind`` "lr" or "plan").

    Example:
        >>> build_schedule("warmup-cosine,warmup=10")(9, 100)
        1.0
        >>> build_schedule("single-stage,iterations=800", kind="plan")
        (Stage(iterations=800, downsample=1),)
    """
    from invkit.errors import InvkitError
    from invkit.registry import registry
    from invkit.specs import parse_options

    name, *pairs = [part.strip() for part in text.split(",")]
    schedules = registry("schedule")
    spec = schedules.get(name)
    if spec.kind != kind:
        valid = ", ".join(s.name for s in schedules if s.kind == kind)
        raise InvkitError(f"schedule {name!r} is a {spec.kind} schedule, not a {kind} one "
                          f"(valid: {valid})")
    given = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise InvkitError(f"malformed schedule {text!r}: {pair!r} is not key=value")
        given[key.strip()] = value.strip()
    return spec.factory(**parse_options(f"schedule {name!r}", spec.options, given))


@hookimpl
def invkit_schedules():
    yield ScheduleSpec("constant", "the base learning rate throughout", factory=constant)
    yield ScheduleSpec("cosine", "cosine decay to 0, no warm-up", factory=cosine)
    yield ScheduleSpec(
        "warmup-cosine", "linear warm-up, then cosine decay to 0 (per stage)",
        factory=warmup_cosine, options=(Option("warmup", int, 100, "warm-up iterations"),),
    )
    yield ScheduleSpec(
        "single-stage", "all iterations at full resolution", factory=single_stage,
        kind="plan", options=(Option("iterations", int, 2000, "iterations"),),
    )
