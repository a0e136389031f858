"""DeepInversion: optimise a batch of inputs so a frozen teacher sees the targets.

Python API (no CLI needed)::

    from invkit import build_objective, parse_prior, load_teacher
    from invkit_plugins.deepinversion import DeepInversion, DIConfig

    teacher = load_teacher("digits")
    objective = build_objective([parse_prior("cross-entropy"),
                                 parse_prior("bn-stats:0.03,first_bn_multiplier=5"),
                                 parse_prior("tv-l2:3e-4")])
    di = DeepInversion(teacher, objective, config=DIConfig(iterations=500, grayscale=True))
    result = di.generate([0, 1, 2, 3], seed=0)
    result.images01            # (4, 3, 32, 32) in [0, 1]
    result.losses              # {"cross-entropy": ..., "bn-stats": ..., "tv-l2": ..., "total": ...}

The loop (one per stage of the plan): Adam on the input only (fresh per stage), warm-up +
cosine learning rate per stage, random jitter (roll), optional flip, average pooling in
low-resolution stages, pixel clipping, best iterate kept on the device. The optimised
tensor is the colour input itself, or one grey channel (``grayscale``, see
:class:`Pixels`). Nothing reads a value back from the device inside the loop except at
the ``save_every`` checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from invkit import (
    PRECISIONS, Checkpoint, Generation, InvkitError, Objective, Setup, Stage, Step, Teacher,
    as_verifier, autocast, build_schedule, finish, frozen, module_device, scale_plan,
    verifier_predictions,
)


@dataclass(frozen=True)
class DIConfig:
    """How one batch is optimised (everything but the objective).

    ``plan`` is the resolution plan (a tuple of :class:`Stage`); ``iterations`` (when set)
    rescales it to that total, split across stages in the same proportions.
    ``grayscale`` optimises one grey image shared by every input channel (see
    :class:`Pixels`): for teachers trained on grey images, such as the bundled digits.

    Example:
        >>> from invkit_plugins.deepinversion.presets import SETTINGS
        >>> DIConfig(plan=SETTINGS[0].plan, iterations=300).stages()
        (Stage(iterations=200, downsample=2), Stage(iterations=100, downsample=1))
    """

    plan: tuple[Stage, ...] = (Stage(2000, 1),)
    iterations: int | None = None
    lr: float = 0.2
    betas: tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-8
    lr_schedule: str = "warmup-cosine"
    jitter: int = 30
    flip: bool = True
    clip: bool = True
    grayscale: bool = False
    amp: str = "fp32"
    resolution: int | None = None
    save_every: int = 100
    keep_best: bool = True
    channels_last: bool | None = None  # None: the default, on
    compile: bool = False

    def __post_init__(self):
        if self.amp not in PRECISIONS:
            raise InvkitError(f"amp {self.amp!r} is not one of: {', '.join(PRECISIONS)}")
        if self.iterations is not None and self.iterations < len(self.plan):
            raise InvkitError(
                f"--iterations {self.iterations} is too few for a {len(self.plan)}-stage "
                f"plan (need at least {len(self.plan)})"
            )
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise InvkitError(f"--lr {self.lr} must be a positive number")
        if self.save_every < 1:
            raise InvkitError(f"--save-every {self.save_every} must be at least 1")
        if self.jitter < 0:
            raise InvkitError(f"--jitter {self.jitter} must be 0 or more")

    def stages(self) -> tuple[Stage, ...]:
        if self.iterations is None:
            return tuple(self.plan)
        return scale_plan(tuple(self.plan), self.iterations)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["plan"] = [dataclasses.asdict(s) for s in self.stages()]
        out["betas"] = list(self.betas)
        # How the step runs, not what the run makes: left out of the identity --resume
        # compares, so a resume may turn it on or off, and runs recorded before the
        # option existed still resume.
        del out["compile"]
        return out


@dataclass(frozen=True)
class Pixels:
    """What is optimised: the teacher's colour input, or one grey image (``grayscale``).

    A teacher trained on grey images has never seen colour: matching its statistics with
    three free channels leaves colour noise that the teacher ignores but another network
    does not (bundled digits, 1,000 images: verifier accuracy 76% in colour, 92% grey).
    The grey image lives in the normalised space of the teacher's average mean and std, so
    the learning rate means the same in both; :meth:`to_input` maps it to every channel.
    Built once per batch on the device: the loop's mapping is one multiply-add.

    Example:
        >>> from invkit import load_teacher
        >>> teacher = load_teacher("digits")
        >>> pixels = Pixels.for_teacher(teacher, grayscale=True)
        >>> x = pixels.noise(4, 32, torch.Generator().manual_seed(0))   # (4, 1, 32, 32)
        >>> pixels.to_input(x).shape
        torch.Size([4, 3, 32, 32])
    """

    channels: int
    low: torch.Tensor | float   # valid pixels [0, 1], in the optimised tensor's space
    high: torch.Tensor | float
    scale: torch.Tensor | None = None  # grey -> teacher input per channel; None in colour
    shift: torch.Tensor | None = None

    @classmethod
    def for_teacher(cls, teacher: Teacher, grayscale: bool = False,
                    device: torch.device | str = "cpu") -> Pixels:
        low, high = teacher.pixel_bounds(torch.empty(0, device=device))
        if not grayscale:
            return cls(channels=low.shape[1], low=low, high=high)
        meta = teacher.meta
        mean, std = sum(meta.mean) / len(meta.mean), sum(meta.std) / len(meta.std)
        # Pixel p in [0, 1] is low + p * (high - low) on each input channel; the grey
        # tensor x is the pixel (x * std + mean).
        return cls(channels=1, low=-mean / std, high=(1 - mean) / std,
                   scale=std * (high - low), shift=low + mean * (high - low))

    def noise(self, n: int, size: int, generator: torch.Generator | None) -> torch.Tensor:
        """The starting point: standard normal noise (CPU), one channel when grey."""
        return torch.randn((n, self.channels, size, size), generator=generator)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's input for the optimised tensor ``x`` (``x`` itself in colour)."""
        if self.scale is None:
            return x
        return x * self.scale + self.shift


def augment(x: torch.Tensor, downsample: int, jitter: int, flip: bool,
            rng: random.Random) -> torch.Tensor:
    """The iteration's view ``x'``: average-pool (low-resolution stage), jitter, flip.

    Offsets and the flip come from a host-side ``random.Random`` so that drawing them
    never touches (or syncs) the device and the sequence is reproducible.
    """
    if downsample > 1:
        x = F.avg_pool2d(x, downsample)
    j = jitter // downsample
    if j > 0:
        dx, dy = rng.randint(-j, j), rng.randint(-j, j)
        if dx or dy:
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
    if flip and rng.random() < 0.5:
        x = torch.flip(x, dims=(3,))
    return x


class DeepInversion:
    """Synthesise images the teacher classifies as given targets (Yin et al., CVPR 2020).

    ``objective`` defaults to the method's (cross-entropy + 0.01*bn-stats(10) +
    1e-4*tv-l2 + 1e-5*l2). ``student`` is passed to priors that need one (``adi``);
    ``verifier`` (a verifier from :mod:`invkit.verifiers`, or a :class:`Teacher` to wrap
    in the ``accuracy`` one) is evaluated at the checkpoints and on the result.
    This class is the method's factory: core calls it with the configured ``config``.

    Example:
        >>> from invkit import load_teacher
        >>> teacher = load_teacher("digits")
        >>> di = DeepInversion(teacher, default_objective(),
        ...                    config=DIConfig(iterations=10, jitter=2))
        >>> result = di.generate([3, 1, 4], seed=0)
        >>> result.images01.shape, sorted(result.losses)
        (torch.Size([3, 3, 32, 32]), ['best_total', 'bn-stats', 'cross-entropy', 'l2', 'total', 'tv-l2'])
    """

    def __init__(self, teacher: Teacher, objective: Objective | None = None, *,
                 config: DIConfig | None = None, student: Teacher | None = None,
                 verifier: Teacher | None = None):
        self.teacher = teacher
        self.objective = objective if objective is not None else default_objective()
        self.config = config or DIConfig()
        self.student = student
        self.verifier = as_verifier(verifier)

    # -- public -----------------------------------------------------------------------
    def generate(self, targets: Sequence[int] | torch.Tensor, seed: int = 0,
                 callback: Callable[[Checkpoint], None] | None = None) -> Generation:
        """Optimise one batch for ``targets``; deterministic for a ``seed`` on CPU."""
        cfg = self.config
        device = module_device(self.teacher.module)
        targets = torch.as_tensor(list(targets) if not torch.is_tensor(targets) else targets,
                                  dtype=torch.long).to(device)
        if targets.ndim != 1 or targets.numel() == 0:
            raise InvkitError("targets must be a non-empty list of class indices")
        num_classes = self.teacher.meta.num_classes
        if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
            raise InvkitError(
                f"target {int(targets.max())} is out of range for a {num_classes}-class teacher"
                f" (valid: 0..{num_classes - 1})"
            )
        size = cfg.resolution or self.teacher.meta.input_size
        stages = cfg.stages()
        for stage in stages:
            if size % stage.downsample:
                raise InvkitError(f"resolution {size} is not divisible by the stage's "
                                  f"downsample factor {stage.downsample}")
        # Channels-last convolutions were 7-25% faster than contiguous ones on CPU too
        # (ResNets, MobileNet, DenseNet, EfficientNet, the digits CNN; README).
        channels_last = cfg.channels_last is not False
        memory_format = torch.channels_last if channels_last else torch.contiguous_format

        # Initial noise from a seeded CPU generator: the same start on every device.
        pixels = Pixels.for_teacher(self.teacher, cfg.grayscale, device)
        gen = torch.Generator().manual_seed(int(seed))
        x = pixels.noise(targets.numel(), size, gen)
        x = x.to(device).contiguous(memory_format=memory_format).requires_grad_(True)
        rng = random.Random(int(seed))
        low, high = pixels.low, pixels.high
        amp = autocast(device, cfg.amp)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        schedule = build_schedule(cfg.lr_schedule, kind="lr")
        total_iterations = sum(s.iterations for s in stages)

        module = self.teacher.module
        module.to(memory_format=memory_format)
        student = self.student
        best_x = None
        best_loss = None
        last: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        timings: list[float] = []
        done = 0
        setup = Setup(teacher=self.teacher, student=student)
        net = module  # or its torch.compile (--compile), chosen at the first step

        def forward(net: torch.nn.Module, view: torch.Tensor, iteration: int):
            logits = net(view)
            # The adi prior runs the student (from Setup) on this view itself.
            step = Step(inputs=view, logits=logits, targets=targets, teacher=self.teacher,
                        iteration=iteration)
            total, terms = self.objective(step)
            return total, terms

        with frozen(module), frozen(student.module if student else None), \
                self.objective.attached(setup):
            for stage_index, stage in enumerate(stages):
                final_stage = stage_index == len(stages) - 1
                # Fused Adam takes the scaler's inf check as a tensor: no sync per step.
                optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                             fused=True)
                started = time.perf_counter()
                for i in range(stage.iterations):
                    lr = cfg.lr * schedule(i, stage.iterations)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    view = pixels.to_input(augment(x, stage.downsample, cfg.jitter,
                                                   cfg.flip, rng))
                    if cfg.compile and done == 0:
                        with amp:
                            net = compiled_or_eager(
                                module, lambda n: forward(n, view.detach().requires_grad_(), 0))
                    with amp:
                        total, terms = forward(net, view, done)
                    total = total.float()
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(total).backward()
                    if final_stage and cfg.keep_best:
                        # The iterate that produced this loss, kept without a sync.
                        loss = total.detach()
                        if best_x is None:
                            best_x, best_loss = x.detach().clone(), loss
                        else:
                            better = loss < best_loss
                            best_x = torch.where(better, x.detach(), best_x)
                            best_loss = torch.minimum(loss, best_loss)
                    scaler.step(optimizer)
                    scaler.update()
                    if cfg.clip:
                        with torch.no_grad():
                            x.clamp_(low, high)
                    done += 1
                    last = (total.detach(), {k: v.detach() for k, v in terms.items()})
                    if callback is not None:
                        checkpoint = done % cfg.save_every == 0 or done == total_iterations
                        accuracy = None
                        # A copy: in colour to_input returns x itself, which the next
                        # steps change in place (a callback may keep what it is given).
                        current = pixels.to_input(x.detach().clone()) if checkpoint else None
                        if checkpoint and self.verifier is not None:
                            pred = self.verify(current)
                            accuracy = float((pred == targets.cpu()).float().mean())
                        description = f"{stage.downsample}x down" if stage.downsample > 1 else ""
                        callback(Checkpoint(
                            stage=stage_index + 1, stages=len(stages), iteration=done,
                            total_iterations=total_iterations, stage_iteration=i + 1,
                            stage_iterations=stage.iterations, lr=lr,
                            losses=_to_floats(*last) if checkpoint else None,
                            inputs=current, verifier_accuracy=accuracy,
                            description=description,
                        ))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # honest stage timings
                timings.append(time.perf_counter() - started)

        final = pixels.to_input(best_x if best_x is not None else x.detach())
        losses = _to_floats(*last)
        if best_loss is not None:
            losses["best_total"] = float(best_loss)
        return finish(self.teacher, final, targets, losses, verifier=self.verifier,
                      timings=timings, iterations=total_iterations, precision=cfg.amp)

    @torch.no_grad()
    def verify(self, inputs: torch.Tensor) -> torch.Tensor:
        """The verifier's predictions (CPU) on normalised ``inputs`` (resized as needed)."""
        images01 = self.teacher.denormalize(inputs.float()).clamp(0, 1)
        return verifier_predictions(self.verifier, images01)


def compiled_or_eager(module: torch.nn.Module, trial: Callable) -> torch.nn.Module:
    """``torch.compile(module)`` when a trial step through it works, else ``module``
    itself, with one warning saying why (``--compile``).

    The teacher's forward is compiled with the priors' forward hooks (``bn-stats``) traced
    into it, and the backward with it; the rest of the objective stays eager, so a prior
    may read anything from the :class:`Step` without causing recompiles.
    ``trial(net)`` returns the loss of one step through ``net`` on a copy of the images:
    compiling happens there, and a missing compiler (Inductor needs a C++ compiler on CPU,
    Triton on CUDA) shows up before the batch starts rather than in its middle.
    """
    compiled = torch.compile(module)
    try:
        total, _ = trial(compiled)
        total.float().backward()
    except InvkitError:
        raise
    except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
        reason = " ".join(str(error).split())[:160] or "no message"
        warnings.warn(f"--compile: torch.compile failed ({type(error).__name__}: {reason}); "
                      f"running eagerly", RuntimeWarning, stacklevel=2)
        return module
    return compiled


def default_objective() -> Objective:
    """The method's default objective (its ``default_priors``)."""
    from invkit import build_objective, parse_prior
    from invkit_plugins.deepinversion.presets import DEFAULT_PRIORS

    return build_objective([parse_prior(p) for p in DEFAULT_PRIORS])


def _to_floats(total: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    # One transfer for all terms instead of one sync per value.
    values = torch.stack([t.float() for t in terms.values()] + [total.float()]).cpu().tolist()
    out = dict(zip(terms, values[:-1]))
    out["total"] = values[-1]
    return out
