"""The records plugins return from hooks: frozen dataclasses, one per concept.

Every record has a ``name`` (unique within its kind), a one-line ``summary`` and a
``factory`` that builds the real object. ``provider`` is filled in by the registry
with the name of the plugin that returned the record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from invkit.errors import InvkitError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click
    from torch import nn

_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True,
               "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class Option:
    """A typed option of a prior, schedule or verifier.

    Example:
        >>> Option("first_bn_multiplier", float, 10.0, "weight of the first BN layer").parse("5")
        5.0
    """

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None

    def parse(self, value: Any) -> Any:
        """Convert ``value`` (often a string from the command line) to this option's type.

        Float options must be finite (NaN and infinities are refused, see
        :func:`invkit.validate.finite_float`).
        """
        if self.type is float:
            from invkit.validate import finite_float

            parsed = finite_float(value, f"option {self.name}")
        else:
            try:
                if self.type is bool and isinstance(value, str):
                    parsed = _BOOL_WORDS[value.strip().lower()]
                else:
                    parsed = self.type(value)
            except (KeyError, TypeError, ValueError, OverflowError):
                raise InvkitError(
                    f"option {self.name}={value!r} is not a valid {self.type.__name__}"
                ) from None
        if self.choices is not None and parsed not in self.choices:
            raise InvkitError(
                f"option {self.name}={value!r} must be one of: "
                + ", ".join(map(str, self.choices))
            )
        return parsed


def parse_options(owner: str, options: tuple[Option, ...], given: Mapping[str, Any]) -> dict:
    """Validate ``given`` against ``options``: defaults filled in, values typed.

    Example:
        >>> parse_options("bn-stats", (Option("m", float, 10.0),), {"m": "2"})
        {'m': 2.0}
    """
    known = {o.name: o for o in options}
    for key in given:
        if key not in known:
            valid = ", ".join(sorted(known)) or "none"
            raise InvkitError(f"{owner} has no option {key!r} (valid options: {valid})")
    return {o.name: o.parse(given[o.name]) if o.name in given else o.default for o in options}


@dataclass(frozen=True)
class TeacherMeta:
    """What a method needs to know about a classifier besides its weights.

    Example:
        >>> TeacherMeta(arch="resnet18", input_size=224, num_classes=1000, family="imagenet").family
        'imagenet'
    """

    arch: str
    input_size: int
    num_classes: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    class_names: tuple[str, ...] | None = None
    weights: str = "none"
    #: Trained on grey images (every input channel equal): methods then optimise grey.
    grayscale: bool = False
    #: The dataset family the network was trained on, when known ("imagenet", "cifar10",
    #: "digits", ...): methods pick their presets from it, never from the teacher's name.
    family: str | None = None

    def class_name(self, index: int) -> str | None:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return None


@dataclass(frozen=True, eq=False)
class Teacher:
    """A ready classifier: the module (in eval mode) and its metadata.

    Example:
        >>> import torch
        >>> from invkit.teachers import load_teacher
        >>> teacher = load_teacher("digits")          # see invkit.teachers
        >>> images01 = torch.rand(2, 3, 32, 32)       # two images in [0, 1]
        >>> teacher.module(teacher.normalize(images01)).shape
        torch.Size([2, 10])
    """

    module: nn.Module
    meta: TeacherMeta
    name: str

    def normalize(self, images01):
        """Map images in [0, 1] to the network's input space."""
        mean, std = self._stats(images01)
        return (images01 - mean) / std

    def prepare(self, images01):
        """Images in [0, 1] as this network's input: resized to its size, then normalised."""
        import torch.nn.functional as F

        size = self.meta.input_size
        if images01.shape[-2:] != (size, size):
            images01 = F.interpolate(images01, size=(size, size), mode="bilinear", antialias=True,
                                     align_corners=False)  # pragma: no mutate (None: the same)
        return self.normalize(images01)

    def denormalize(self, inputs):
        """Map network inputs back to images in [0, 1] (not clamped)."""
        mean, std = self._stats(inputs)
        return inputs * std + mean

    def pixel_bounds(self, like):
        """Per-channel (low, high) of valid pixels in normalised space, shaped (1, C, 1, 1)."""
        mean, std = self._stats(like)
        return -mean / std, (1 - mean) / std

    def _stats(self, like):
        import torch

        mean = torch.tensor(self.meta.mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.meta.std, dtype=like.dtype, device=like.device)
        return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


@dataclass(frozen=True)
class TeacherSpec:
    """A named classifier a method can invert (or use as a verifier or student).

    ``factory(weights=None, **kwargs)`` returns a :class:`Teacher`. ``weights`` is
    ``None`` for the spec's default, ``"none"`` for random initialisation, a weights
    name the source understands, or a file path.

    Example:
        >>> def make_tiny(weights=None): ...      # returns a Teacher
        >>> TeacherSpec("tiny", "a 2-layer test net", factory=make_tiny,
        ...             source="mine", input_size=32, num_classes=10).input_size
        32
    """

    name: str
    summary: str
    factory: Callable[..., Teacher]
    source: str = ""
    input_size: int | None = None
    num_classes: int | None = None
    default_weights: str = "none"
    #: As in :class:`TeacherMeta`: known without building the network (listings, presets).
    grayscale: bool = False
    family: str | None = None
    #: Whether the network has BatchNorm layers (None: unknown until it is built).
    batchnorm: bool | None = None
    provider: str = ""


@dataclass(frozen=True)
class PriorSpec:
    """A named loss term. ``factory(**options)`` returns an :class:`invkit.objective.Prior`.

    Example:
        >>> from invkit.priors import TotalVariation
        >>> PriorSpec("tv-l2", "total variation, L2", factory=TotalVariation,
        ...           default_weight=1e-4, options=()).default_weight
        0.0001
    """

    name: str
    summary: str
    factory: Callable[..., Any]
    default_weight: float = 1.0
    options: tuple[Option, ...] = ()
    provider: str = ""


@dataclass(frozen=True)
class Stage:
    """One stage of a resolution plan: ``iterations`` steps with inputs pooled by ``downsample``."""

    iterations: int
    downsample: int = 1


@dataclass(frozen=True)
class ScheduleSpec:
    """A learning-rate schedule (``kind="lr"``) or a resolution plan (``kind="plan"``).

    For ``"lr"`` the factory returns ``f(step, total) -> multiplier`` of the base rate;
    for ``"plan"`` it returns a tuple of :class:`Stage`.

    Example:
        >>> spec = ScheduleSpec("constant", "constant rate",
        ...                     factory=lambda: (lambda i, n: 1.0), kind="lr")
        >>> spec.factory()(0, 100)
        1.0
    """

    name: str
    summary: str
    factory: Callable[..., Any]
    kind: str = "lr"
    options: tuple[Option, ...] = ()
    provider: str = ""


@dataclass(frozen=True)
class VerifierSpec:
    """A way to judge generated images with a second network.

    ``factory(teacher: Teacher, **options)`` returns ``verify(images01, targets) -> dict``
    of named figures (for example ``{"top1": 0.93}``).

    Example:
        >>> from invkit.verifiers import TopKAccuracy
        >>> VerifierSpec("top1", "top-1 accuracy of a classifier", factory=TopKAccuracy).name
        'top1'
    """

    name: str
    summary: str
    factory: Callable[..., Callable[..., dict]]
    options: tuple[Option, ...] = ()
    provider: str = ""


@dataclass(frozen=True)
class PriorFlag:
    """A method's shorthand flag for a prior's weight (or one of its options).

    ``--r-feature 0.01`` is DeepInversion's published spelling of ``--prior bn-stats:0.01``;
    with ``option`` set the flag sets that option of the prior instead of its weight.

    Example:
        >>> PriorFlag("r_feature", "bn-stats", flags=("--r-feature", "--r_feature")).prior
        'bn-stats'
    """

    name: str
    prior: str
    flags: tuple[str, ...] = ()
    option: str | None = None
    help: str = ""


@dataclass(frozen=True)
class Preset:
    """A method's defaults for one kind of teacher (a dataset family, or small images).

    ``options`` is an instance of the method's options dataclass holding this preset's
    values (``None`` fields: the method's own defaults). ``priors`` are ``--prior``
    entries applied over the method's ``default_priors`` (an entry replaces the default of
    its name). ``families`` and ``max_input_size`` say which teachers the preset is
    picked for (see :func:`invkit.methods.choose_preset`). ``weights`` and
    ``verifier_weights`` are the weights the preset's own teacher and verifier use when
    none are given (e.g. the ones a paper used).

    Example:
        >>> Preset("small", "32 px teachers", teacher="cifar-resnet34", options=None,
        ...        bs=256, max_input_size=64).max_input_size
        64
    """

    name: str
    summary: str
    teacher: str
    options: Any = None
    priors: tuple[str, ...] = ()
    bs: int = 64
    targets: tuple[int, ...] | None = None
    verifier: str | None = None
    families: tuple[str, ...] = ()
    max_input_size: int | None = None
    weights: str | None = None
    verifier_weights: str | None = None


@dataclass(frozen=True)
class MethodSpec:
    """An inversion method; core mounts it as ``invkit run NAME``.

    - ``factory(teacher, objective, *, config, student=None, verifier=None)`` returns a
      generator: an object with ``generate(targets, seed=0, callback=None)`` returning an
      :class:`invkit.methods.Generation`.
    - ``options``: a frozen dataclass of the method's own options (fields declared with
      :func:`invkit.methods.option`); core turns each field into a typed CLI option.
    - ``configure(options, context) -> config``: the resolved, validated configuration the
      factory receives (default: the options themselves); it is part of the run's identity.
    - ``default_priors``: the objective, as ``--prior`` entries; ``presets``: defaults per
      kind of teacher; ``prior_flags``: shorthand flags for prior weights.
    - ``needs_batchnorm``: the method cannot invert a teacher without BatchNorm layers.

    Example:
        >>> from dataclasses import dataclass
        >>> from invkit.methods import option
        >>> @dataclass(frozen=True)
        ... class NoiseOptions:
        ...     iterations: int = option(100, "optimisation steps", min=1)
        >>> def make_noise_generator(teacher, objective, *, config, student=None,
        ...                          verifier=None): ...    # returns a generator
        >>> MethodSpec("noise", "optimise noise", factory=make_noise_generator,
        ...            options=NoiseOptions, default_priors=("cross-entropy",)).name
        'noise'
    """

    name: str
    summary: str
    factory: Callable[..., Any]
    options: type | None = None
    configure: Callable[..., Any] | None = None
    default_priors: tuple[str, ...] = ()
    presets: tuple[Preset, ...] = ()
    prior_flags: tuple[PriorFlag, ...] = ()
    needs_batchnorm: bool = False
    provider: str = ""


KINDS: dict[str, type] = {
    "teacher": TeacherSpec,
    "prior": PriorSpec,
    "schedule": ScheduleSpec,
    "verifier": VerifierSpec,
    "method": MethodSpec,
}

__all__ = [
    "Option", "parse_options", "TeacherMeta", "Teacher", "TeacherSpec", "PriorSpec",
    "Stage", "ScheduleSpec", "VerifierSpec", "PriorFlag", "Preset", "MethodSpec", "KINDS",
]
