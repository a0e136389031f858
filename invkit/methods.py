"""The method API: what a method's generator returns, its typed options and presets.

A method is a :class:`~invkit.specs.MethodSpec` whose ``factory`` builds a *generator*:
an object with ``generate(targets, seed=0, callback=None) -> Generation``. Core does
everything around it (teachers, plans, torchrun, resume, progress, files), for every
method. A whole method can be this small::

    @dataclass(frozen=True)
    class NoiseOptions:
        steps: int = option(50, "optimisation steps", min=1)

    class Noise:
        def __init__(self, teacher, objective, *, config, student=None, verifier=None):
            self.teacher, self.objective, self.config = teacher, objective, config
            self.verifier = verifier
        def generate(self, targets, seed=0, callback=None):
            ...                                     # optimise, calling callback(Checkpoint)
            return finish(self.teacher, inputs, targets, losses, verifier=self.verifier)

    MethodSpec("noise", "optimise noise", factory=Noise, options=NoiseOptions,
               default_priors=("cross-entropy",))

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opts:
    ...     steps: int | None = option(None, "optimisation steps", min=1)
    >>> [(o.name, o.type.__name__, o.min) for o in method_options(Opts)]
    [('steps', 'int', 1)]
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from invkit.errors import InvkitError
from invkit.specs import Preset, TeacherMeta

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from invkit.specs import Teacher

PRECISIONS = ("fp32", "fp16", "bf16")


# --------------------------------------------------------------------------- options


def option(default: Any = None, help: str = "", *, flags: Sequence[str] = (),
           choices: Sequence[Any] | None = None, min: float | None = None,
           max: float | None = None, metavar: str | None = None) -> Any:
    """Declare one field of a method's options dataclass, with what the CLI needs.

    ``flags`` are the click declarations (default ``--field-name``; booleans with a
    ``None`` default get ``--name/--no-name``); ``None`` as the default means "the
    preset's value, else the method's own default".

    Example:
        >>> @dataclass(frozen=True)
        ... class Opts:
        ...     lr: float | None = option(None, "learning rate", min=0)
        >>> Opts().lr is None
        True
    """
    return field(default=default, metadata={
        "help": help, "flags": tuple(flags), "choices": tuple(choices) if choices else None,
        "min": min, "max": max, "metavar": metavar,
    })


@dataclass(frozen=True)
class MethodOption:
    """One option of a method, read from its options dataclass (see :func:`method_options`)."""

    name: str
    type: type
    default: Any
    help: str = ""
    flags: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    metavar: str | None = None


def method_options(options_cls: type | None) -> tuple[MethodOption, ...]:
    """The options a method declares: one :class:`MethodOption` per dataclass field.

    Example:
        >>> method_options(None)
        ()
    """
    if options_cls is None:
        return ()
    hints = typing.get_type_hints(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        meta = f.metadata
        out.append(MethodOption(
            name=f.name, type=_base_type(hints.get(f.name, str)), default=f.default,
            help=meta.get("help", ""), flags=meta.get("flags", ()),
            choices=meta.get("choices"), min=meta.get("min"), max=meta.get("max"),
            metavar=meta.get("metavar"),
        ))
    return tuple(out)


def _base_type(hint: Any) -> type:
    # ``int | None`` -> int: None only ever means "not given".
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint if isinstance(hint, type) else str


def merge_options(*layers: Any) -> Any:
    """Layer options instances of one class: a later layer's non-``None`` fields win.

    Example:
        >>> @dataclass(frozen=True)
        ... class Opts:
        ...     a: int | None = None
        ...     b: int | None = None
        >>> merge_options(Opts(a=1, b=2), Opts(b=3))
        Opts(a=1, b=3)
    """
    layers = [layer for layer in layers if layer is not None]
    if not layers:
        return None
    merged = layers[0]
    for layer in layers[1:]:
        given = {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)
                 if getattr(layer, f.name) is not None}
        merged = dataclasses.replace(merged, **given)
    return merged


# --------------------------------------------------------------------------- presets


def choose_preset(presets: Sequence[Preset], meta: TeacherMeta | None,
                  name: str | None = None) -> Preset | None:
    """The preset for a teacher: by ``name`` if given, else by what the teacher *is*.

    In order: a preset listing the teacher's dataset ``family``; else the first preset
    whose ``max_input_size`` admits the teacher's input size (small-image defaults);
    else the first preset with neither rule (the method's general default).

    Example:
        >>> big = Preset("imagenet", "224 px", teacher="resnet50", families=("imagenet",))
        >>> small = Preset("small", "32 px", teacher="cifar-resnet34", max_input_size=64)
        >>> choose_preset([big, small], TeacherMeta("mine", 32, 10)).name
        'small'
    """
    if name is not None:
        for preset in presets:
            if preset.name == name:
                return preset
        valid = ", ".join(p.name for p in presets) or "none"
        raise InvkitError(f"unknown preset {name!r} (valid: {valid})")
    if not presets:
        return None
    if meta is not None:
        for preset in presets:
            if meta.family and meta.family in preset.families:
                return preset
        sized = [p for p in presets if p.max_input_size is not None
                 and meta.input_size <= p.max_input_size]
        if sized:
            return min(sized, key=lambda p: p.max_input_size)
    # A family preset is no general default: "any other teacher" must not get digits' values.
    general = [p for p in presets if p.max_input_size is None and not p.families]
    return (general or list(presets))[0]


# --------------------------------------------------------------------------- configure


@dataclass(frozen=True)
class Context:
    """What a method's ``configure`` may consult besides its options.

    ``meta``: the teacher's metadata (known before any weights load); ``precision``:
    fp32, fp16 or bf16; ``checkpoint_every``: iterations between the checkpoints at which
    losses are read back and the callback gets images; ``batch_size``: images per batch
    (for memory estimates); ``device``: where the run will happen.
    """

    meta: TeacherMeta
    precision: str = "fp32"
    checkpoint_every: int = 100
    batch_size: int = 1
    device: str = "cpu"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Checkpoint:
    """What a generator's ``callback`` receives.

    After every iteration with ``losses=None`` (cheap: nothing is read from the device);
    every ``checkpoint_every`` iterations and at the end with ``losses`` (unweighted floats
    per term plus ``"total"``, the weighted sum), ``inputs`` (the current batch in the
    teacher's normalised space) and the verifier's accuracy when there is a verifier.
    """

    stage: int
    stages: int
    iteration: int          # 1-based, counted over all stages
    total_iterations: int
    stage_iteration: int    # 1-based within the stage
    stage_iterations: int
    lr: float = 0.0
    losses: dict[str, float] | None = None
    inputs: Any = None
    verifier_accuracy: float | None = None
    description: str = ""   # e.g. "2x down": what is special about this stage


@dataclass
class Generation:
    """One generated batch, whatever the method.

    ``inputs``: the images in the teacher's normalised space; ``images01``: the same in
    [0, 1] (clamped, CPU float32); ``losses``: unweighted per-term losses plus ``"total"``;
    ``timings``: seconds per stage; the teacher's prediction and confidence on the result,
    and the verifier's prediction (if any).
    """

    inputs: Any
    images01: Any
    targets: Any
    losses: dict[str, float]
    timings: list[float] = field(default_factory=list)
    its_per_s: float = 0.0
    teacher_pred: Any = None
    teacher_conf: Any = None
    verifier_pred: Any = None

    @property
    def teacher_accuracy(self) -> float:
        return float((self.teacher_pred == self.targets).float().mean())

    @property
    def verifier_accuracy(self) -> float | None:
        if self.verifier_pred is None:
            return None
        return float((self.verifier_pred == self.targets).float().mean())


def finish(teacher: Teacher, inputs: torch.Tensor, targets: torch.Tensor,
           losses: dict[str, float], *, verifier=None, timings: Sequence[float] = (),
           iterations: int = 0, precision: str = "fp32") -> Generation:
    """A :class:`Generation` for final ``inputs``: images in [0, 1] and every prediction.

    Example:
        >>> import torch
        >>> from invkit.teachers import load_teacher
        >>> teacher = load_teacher("digits")
        >>> x, targets = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
        >>> result = finish(teacher, x, targets, {"total": 0.5}, iterations=100,
        ...                 timings=[2.0])
        >>> result.its_per_s
        50.0
        >>> result.images01.shape
        torch.Size([2, 3, 32, 32])
    """
    import torch

    images01 = teacher.denormalize(inputs.float()).clamp(0, 1).contiguous().cpu()
    elapsed = sum(timings)
    pred, conf = teacher_predictions(teacher, inputs, precision)
    return Generation(
        inputs=inputs.contiguous(), images01=images01, targets=torch.as_tensor(targets).cpu(),
        losses=dict(losses), timings=list(timings),
        its_per_s=iterations / elapsed if elapsed > 0 else 0.0,
        teacher_pred=pred, teacher_conf=conf,
        verifier_pred=verifier_predictions(verifier, images01) if verifier is not None else None,
    )


def teacher_predictions(teacher: Teacher, inputs: torch.Tensor,
                        precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's (prediction, confidence) on normalised ``inputs``, on the CPU."""
    import torch

    device = module_device(teacher.module)
    with torch.no_grad(), autocast(device, precision):
        logits = teacher.module(inputs.to(device))
    conf, pred = logits.float().softmax(1).max(1)
    return pred.cpu(), conf.cpu()


def verifier_predictions(verifier, images01: torch.Tensor) -> torch.Tensor:
    """The verifier's top-1 classes (CPU) on images in [0, 1] (see :mod:`invkit.verifiers`)."""
    return verifier.predict(images01).argmax(1).cpu()


# --------------------------------------------------------------------------- helpers


def module_device(module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without any)."""
    import torch

    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def autocast(device: torch.device, precision: str):
    """Autocast for ``precision`` (fp16/bf16) on ``device``; a no-op for fp32."""
    import torch

    if precision not in PRECISIONS:
        raise InvkitError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def frozen(module) -> Iterator:
    """Eval mode and ``requires_grad=False`` on every parameter, restored on exit.

    With frozen weights a backward pass computes input gradients only: no weight
    gradients nobody uses (about a third of the published DeepInversion step).
    ``None`` is accepted and yields ``None`` (an optional student).
    """
    if module is None:
        yield None
        return
    was_training = module.training
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(was_training)


Callback = Callable[[Checkpoint], None]

__all__ = [
    "option", "MethodOption", "method_options", "merge_options", "choose_preset", "Context",
    "Checkpoint", "Generation", "finish", "teacher_predictions", "verifier_predictions",
    "module_device", "autocast", "frozen", "Callback", "PRECISIONS",
]
