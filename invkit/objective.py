"""Priors as objects that add and scale, and the objective they sum to.

Example:
    >>> from invkit.priors import CrossEntropy, TotalVariation
    >>> objective = CrossEntropy() + 1e-4 * TotalVariation(p=2)
    >>> objective.describe()
    '1*cross-entropy + 0.0001*tv-l2'
    >>> import torch
    >>> from invkit.teachers import load_teacher
    >>> teacher = load_teacher("digits")
    >>> x, targets = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    >>> step = Step(inputs=x, logits=teacher.module(x), targets=targets, teacher=teacher)
    >>> total, terms = objective(step)
    >>> sorted(terms)
    ['cross-entropy', 'tv-l2']

On the command line the same objective is ``--prior cross-entropy --prior tv-l2:1e-4``;
:func:`parse_prior` reads one such ``NAME[:WEIGHT][,key=value...]`` entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from invkit.errors import InvkitError
from invkit.specs import Teacher, parse_options
from invkit.validate import finite_float

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from invkit.registry import Registry


@dataclass(frozen=True, eq=False)
class Setup:
    """What priors may attach to before optimisation starts (hooks on the teacher, a student)."""

    teacher: Teacher
    student: Teacher | None = None


@dataclass(eq=False)
class Step:
    """One optimisation step, as the priors see it.

    ``inputs`` is the augmented batch the teacher saw (normalised space), ``logits``
    the teacher's output on it, ``extras`` anything a method adds (e.g. ``"student_logits"``).
    """

    inputs: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    teacher: Teacher
    iteration: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


class Prior:
    """Base class of a loss term. Subclasses implement :meth:`__call__` (unweighted, a scalar).

    Priors that read activations register hooks in :meth:`setup` and remove them in
    :meth:`teardown`. ``name`` and ``options`` make up the readable description.

    Example:
        >>> class Brightness(Prior):
        ...     name = "brightness"
        ...     def __call__(self, step):
        ...         return step.inputs.mean() ** 2
        >>> (0.5 * Brightness()).describe()
        '0.5*brightness'
    """

    name = "prior"

    def __init__(self, **options: Any):
        self.options = dict(options)

    def __call__(self, step: Step) -> torch.Tensor:
        raise NotImplementedError

    def setup(self, setup: Setup) -> None:
        """Prepare to run on ``setup.teacher`` (e.g. register forward hooks)."""

    def teardown(self) -> None:
        """Undo :meth:`setup`."""

    def describe(self) -> str:
        if not self.options:
            return self.name
        args = ",".join(f"{k}={_fmt(v)}" for k, v in self.options.items())
        return f"{self.name}({args})"

    def __repr__(self) -> str:
        return f"<Prior {self.describe()}>"

    # Arithmetic: a prior is an objective with one term of weight 1.
    def objective(self) -> Objective:
        return Objective([(1.0, self)])

    def __mul__(self, weight: float) -> Objective:
        return self.objective() * weight

    __rmul__ = __mul__

    def __truediv__(self, weight: float) -> Objective:
        return self.objective() / weight

    def __neg__(self) -> Objective:
        return -self.objective()

    def __add__(self, other: Prior | Objective) -> Objective:
        return self.objective() + other

    def __sub__(self, other: Prior | Objective) -> Objective:
        return self.objective() - other

    def __radd__(self, other: Any) -> Objective:
        if other == 0:  # so that sum([...]) works
            return self.objective()
        return NotImplemented


def define_prior(name: str, summary: str, *, default_weight: float = 1.0,
                 help: dict[str, str] | None = None):
    """Declare a prior where its class is defined: its name, summary, default weight,
    and options read from the constructor's parameters (names, defaults, types).

    The class gets ``name`` and ``spec`` (a :class:`~invkit.specs.PriorSpec` to yield
    from the ``invkit_priors`` hook); ``help`` describes the options.

    Example:
        >>> @define_prior("brightness", "mean pixel value", default_weight=0.1,
        ...               help={"target": "the mean to reach"})
        ... class Brightness(Prior):
        ...     def __init__(self, target: float = 0.5):
        ...         super().__init__(target=target)
        ...         self.target = target
        >>> Brightness.spec.options[0].name, Brightness.spec.options[0].default
        ('target', 0.5)
        >>> Brightness().describe()
        'brightness(target=0.5)'
    """
    from invkit.specs import PriorSpec

    def decorate(cls):
        cls.name = name
        cls.spec = PriorSpec(name, summary, factory=cls, default_weight=default_weight,
                             options=options_from_signature(cls, help or {}))
        return cls

    return decorate


def options_from_signature(factory, help: dict[str, str]) -> tuple:
    """One :class:`~invkit.specs.Option` per parameter of ``factory`` that has a default.

    Example:
        >>> def f(k: int = 5, mode="a"): ...
        >>> [(o.name, o.type.__name__, o.default) for o in options_from_signature(f, {})]
        [('k', 'int', 5), ('mode', 'str', 'a')]
    """
    import inspect
    import typing

    from invkit.specs import Option

    hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    options = []
    for param in inspect.signature(factory).parameters.values():
        if param.default is inspect.Parameter.empty or param.kind in (
                param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kind = hints.get(param.name)
        options.append(Option(param.name, kind if isinstance(kind, type) else type(param.default),
                              param.default, help.get(param.name, "")))
    unknown = set(help) - {o.name for o in options}
    if unknown:
        raise ValueError(f"help for unknown options: {', '.join(sorted(unknown))}")
    return tuple(options)


class Objective:
    """A weighted sum of priors; calling it returns ``(total, {label: unweighted loss})``.

    Objectives add, subtract, negate and scale (``*``, ``/``) like numbers.

    Example:
        >>> from invkit.priors import CrossEntropy, L2Norm
        >>> (CrossEntropy() - L2Norm() / 4).describe()
        '1*cross-entropy + -0.25*l2'
    """

    def __init__(self, terms: Iterable[tuple[float, Prior]] = ()):
        self.terms: tuple[tuple[float, Prior], ...] = tuple(terms)

    def __add__(self, other: Prior | Objective) -> Objective:
        if isinstance(other, Prior):
            other = Objective([(1.0, other)])
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + other.terms)

    def __radd__(self, other: Any) -> Objective:
        if other == 0:
            return self
        return NotImplemented

    def __mul__(self, weight: float) -> Objective:
        return Objective((w * float(weight), p) for w, p in self.terms)

    __rmul__ = __mul__

    def __truediv__(self, weight: float) -> Objective:
        return self * (1.0 / float(weight))

    def __neg__(self) -> Objective:
        return Objective((-w, p) for w, p in self.terms)

    def __sub__(self, other: Prior | Objective) -> Objective:
        if not isinstance(other, (Prior, Objective)):
            return NotImplemented
        return self + (-other)

    def __iter__(self) -> Iterator[tuple[float, Prior]]:
        return iter(self.terms)

    def __len__(self) -> int:
        return len(self.terms)

    def labels(self) -> list[str]:
        """A unique label per term: the prior's name, or its description when names repeat."""
        names = [p.name for _, p in self.terms]
        return [p.name if names.count(p.name) == 1 else p.describe() for _, p in self.terms]

    def describe(self) -> str:
        if not self.terms:
            return "0"
        return " + ".join(f"{_fmt(w)}*{p.describe()}" for w, p in self.terms)

    def __repr__(self) -> str:
        return f"<Objective {self.describe()}>"

    def __call__(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = {}
        total = None
        for label, (weight, prior) in zip(self.labels(), self.terms):
            value = prior(step).float()
            losses[label] = value
            total = weight * value if total is None else total + weight * value
        if total is None:
            total = step.logits.new_zeros(()).float()
        return total, losses

    @contextmanager
    def attached(self, setup: Setup):
        """Run every prior's setup, and its teardown on exit (hooks never leak)."""
        done: list[Prior] = []
        try:
            for _, prior in self.terms:
                prior.setup(setup)
                done.append(prior)
            yield self
        finally:
            for prior in reversed(done):
                prior.teardown()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------
# Requests: what the command line (or a method's defaults) asks for, before building.


@dataclass(frozen=True)
class PriorRequest:
    """``NAME[:WEIGHT][,key=value...]`` parsed; ``weight=None`` means the prior's default.

    Example:
        >>> parse_prior("bn-stats:0.01,first_bn_multiplier=10")
        PriorRequest(name='bn-stats', weight=0.01, options=(('first_bn_multiplier', '10'),))
    """

    name: str
    weight: float | None = None
    options: tuple[tuple[str, Any], ...] = ()


def parse_prior(text: str) -> PriorRequest:
    """Parse one ``--prior`` value; malformed text raises :class:`InvkitError`."""
    form = "expected NAME[:WEIGHT][,key=value...], e.g. bn-stats:0.01,first_bn_multiplier=10"
    head, *pairs = text.strip().split(",")
    name, sep, weight_text = head.partition(":")
    name = name.strip()
    if not name:
        raise InvkitError(f"malformed --prior {text!r}: missing name; {form}")
    weight = None
    if sep:
        try:
            weight = float(weight_text)
        except ValueError:
            raise InvkitError(
                f"malformed --prior {text!r}: weight {weight_text!r} is not a number; {form}"
            ) from None
        try:
            finite_float(weight, "weight")  # pragma: no mutate (its message is replaced)
        except InvkitError:
            raise InvkitError(f"malformed --prior {text!r}: weight {weight_text!r} is not "
                              f"finite (weights must be finite numbers); {form}") from None
    options = []
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise InvkitError(f"malformed --prior {text!r}: {pair!r} is not key=value; {form}")
        options.append((key.strip(), value.strip()))
    return PriorRequest(name, weight, tuple(options))


def merge_requests(defaults: Sequence[PriorRequest], given: Sequence[PriorRequest],
                   use_defaults: bool = True) -> list[PriorRequest]:
    """Defaults first; a given entry replaces the defaults of its name, or is added.

    Given entries that repeat a name all stay, so they add up
    (see :func:`build_objective`).
    """
    given_names = {r.name for r in given}
    kept = [r for r in defaults if r.name not in given_names] if use_defaults else []
    return kept + list(given)


def set_weight(requests: Sequence[PriorRequest], name: str, weight: float | None,
               **options: Any) -> list[PriorRequest]:
    """Apply a shorthand flag such as ``--r-feature 0.01`` to the request for ``name``.

    The first request of that name gets the weight (and options); if none exists one is
    added. A weight of 0 drops the term. ``weight=None`` with no options changes nothing.
    """
    if weight is None and not options:
        return list(requests)
    out, done = [], False
    for request in requests:
        if request.name == name and not done:
            done = True
            request = _updated(request, weight, options)
        out.append(request)
    if not done:
        out.append(_updated(PriorRequest(name), weight, options))
    return [r for r in out if r.weight != 0]


def _updated(request: PriorRequest, weight: float | None, options: dict) -> PriorRequest:
    merged = dict(request.options)
    merged.update(options)
    if weight is not None:
        weight = finite_float(weight, f"{request.name} weight")
    return PriorRequest(request.name, request.weight if weight is None else weight,
                        tuple(merged.items()))


def build_prior(spec, options: dict[str, Any] | Iterable[tuple[str, Any]] = ()) -> Prior:
    """Build the prior of ``spec`` with validated options (name and options set for display).

    A factory that raises (a plugin's bug, or a value its own checks refuse) becomes one
    :class:`InvkitError` line naming the prior and the plugin that provides it.

    Example:
        >>> from invkit.registry import registry
        >>> build_prior(registry("prior").get("tv-l2")).name
        'tv-l2'
    """
    parsed = parse_options(f"prior {spec.name!r}", spec.options, dict(options))
    from invkit.plugins import call_factory

    prior = call_factory(spec.factory, f"prior {spec.name!r}", spec.provider, **parsed)
    prior.name = spec.name
    prior.options = parsed
    return prior


def build_objective(requests: Sequence[PriorRequest], priors: Registry | None = None) -> Objective:
    """Turn requests into an :class:`Objective`; the same prior with the same options adds up.

    Example:
        >>> build_objective([parse_prior("tv-l2"), parse_prior("tv-l2:1e-4")]).describe()
        '0.0002*tv-l2'
    """
    if priors is None:
        from invkit.registry import registry

        priors = registry("prior")
    terms: dict[tuple, list] = {}
    for request in requests:
        spec = priors.get(request.name)
        prior = build_prior(spec, request.options)
        weight = spec.default_weight if request.weight is None else request.weight
        weight = finite_float(weight, f"{spec.name} weight")
        key = (spec.name, tuple(sorted((k, repr(v)) for k, v in prior.options.items())))
        if key in terms:
            terms[key][0] += weight
        else:
            terms[key] = [weight, prior]
    return Objective((w, p) for w, p in terms.values() if w != 0)
