"""Plug-In Inversion's loop: class score under an ensemble of strong random augmentations.

Written from the paper (Ghiasi et al., ICML 2022, "Plug-In Inversion: Model-Agnostic
Inversion for Vision with Data Augmentations"). The paper drops hand-tuned image priors;
what keeps the images natural is that every step the teacher sees ``ensemble`` augmented
copies of each image, and only the class evidence that survives all of them is kept:

- **ColorShift**: each copy's colours change by a random per-channel affine map
  ``x -> sigma * x + mu`` (``mu ~ U(-a, a)``, ``sigma = exp(U(-a, a))``, ``a`` =
  ``color_shift``), so the image cannot rely on exact colours;
- **Zoom**: each copy is a random crop (side a fraction ``U(zoom, 1)`` of the image, at a
  random place) resized back to the full size;
- **Centering**: the plan's stages grow the optimised region outwards: in a stage with
  ``downsample = d`` only the central ``size / d`` square is optimised, the rest keeps its
  starting value; the last stage (``d = 1``) optimises the whole image.

The optimised tensor is the image itself in [0, 1] (one grey channel for grey teachers),
clipped to [0, 1] after every step: the paper optimises pixels directly and names no
image prior, so the method's objective is the class score (``cross-entropy``) alone;
any ``--prior`` (``tv-l2``, ``bn-stats`` on a BatchNorm teacher, ...) can be added.

Python API::

    from invkit import build_objective, parse_prior, load_teacher
    from invkit_plugins.plugin_inversion import PlugInInversion, PIIConfig

    teacher = load_teacher("digits-vit")
    objective = build_objective([parse_prior("cross-entropy")])
    pii = PlugInInversion(teacher, objective, config=PIIConfig(iterations=300, grayscale=True))
    result = pii.generate([0, 1, 2], seed=0)
    result.images01.shape     # (3, 3, 32, 32)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from invkit import (
    PRECISIONS, Checkpoint, Generation, InvkitError, Objective, Setup, Stage, Step, Teacher,
    as_verifier, autocast, build_schedule, finish, frozen, module_device, scale_plan,
    verifier_predictions,
)

#: Centering's default plan: the central quarter, then half, then the whole image.
CENTERING_PLAN = (Stage(1, 4), Stage(1, 2), Stage(2, 1))


@dataclass(frozen=True)
class PIIConfig:
    """How one batch is optimised (everything but the objective).

    ``plan``: the Centering stages (``downsample`` d optimises the central ``size/d``
    square), rescaled to ``iterations`` when that is set. ``ensemble``: augmented copies
    of each image per step. ``color_shift``: ColorShift's range ``a`` (0: off).
    ``zoom``: the smallest crop side as a fraction of the image (1: off).

    Example:
        >>> PIIConfig(iterations=400).stages()
        (Stage(iterations=100, downsample=4), Stage(iterations=100, downsample=2), Stage(iterations=200, downsample=1))
    """

    plan: tuple[Stage, ...] = CENTERING_PLAN
    iterations: int | None = 2000
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: str = "cosine"
    ensemble: int = 8
    color_shift: float = 1.0
    zoom: float = 0.5
    flip: bool = True
    grayscale: bool = False
    init_std: float = 0.2
    amp: str = "fp32"
    resolution: int | None = None
    save_every: int = 100

    def __post_init__(self):
        if self.amp not in PRECISIONS:
            raise InvkitError(f"amp {self.amp!r} is not one of: {', '.join(PRECISIONS)}")
        if not self.plan:
            raise InvkitError("the plan has no stages")
        if self.iterations is not None and self.iterations < len(self.plan):
            raise InvkitError(f"--iterations {self.iterations} is too few for a "
                              f"{len(self.plan)}-stage plan (need at least {len(self.plan)})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvkitError(f"--lr {self.lr} must be a positive number")
        if self.ensemble < 1:
            raise InvkitError(f"--ensemble {self.ensemble} must be at least 1")
        if not (0 <= self.color_shift <= 5):
            raise InvkitError(f"--color-shift {self.color_shift} must be between 0 and 5")
        if not (0 < self.zoom <= 1):
            raise InvkitError(f"--zoom {self.zoom} must be in (0, 1] (1: no zoom)")
        if self.save_every < 1:
            raise InvkitError(f"--save-every {self.save_every} must be at least 1")

    def stages(self) -> tuple[Stage, ...]:
        if self.iterations is None:
            return tuple(self.plan)
        return scale_plan(tuple(self.plan), self.iterations)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["plan"] = [dataclasses.asdict(s) for s in self.stages()]
        out["betas"] = list(self.betas)
        return out


# --------------------------------------------------------------------------- augmentations


def center_mask(size: int, downsample: int, device=None) -> torch.Tensor:
    """Centering: 1 on the central ``size // downsample`` square, 0 elsewhere (1, 1, S, S).

    Example:
        >>> center_mask(8, 4)[0, 0].sum().item()
        4.0
    """
    side = max(1, size // downsample)
    start = (size - side) // 2
    mask = torch.zeros(1, 1, size, size, device=device)
    mask[..., start:start + side, start:start + side] = 1
    return mask


def zoom(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Zoom: crop each image to side ``scale`` (fraction) at ``offset`` (in [-1, 1] of the
    free room), resized back to the full size with bilinear sampling.

    ``scale`` is (N,), ``offset`` (N, 2). One batched ``grid_sample`` for every copy.
    """
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = offset * (1 - scale).unsqueeze(1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_shift(x: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """ColorShift: ``exp(log_sigma) * x + mu`` per image and channel (shapes (N, C, 1, 1))."""
    return x * log_sigma.exp() + mu


@dataclass(frozen=True)
class Draw:
    """One step's random augmentation parameters for ``n`` copies (CPU tensors)."""

    scale: torch.Tensor      # (n,)
    offset: torch.Tensor     # (n, 2)
    flip: torch.Tensor       # (n,) bool
    mu: torch.Tensor         # (n, c, 1, 1)
    log_sigma: torch.Tensor  # (n, c, 1, 1)

    @classmethod
    def sample(cls, n: int, channels: int, cfg: PIIConfig, gen: torch.Generator) -> Draw:
        # Always the same number of draws, whatever is switched off: a seed's stream of
        # parameters does not depend on the options' values.
        u = torch.rand(n, 4 + 2 * channels, generator=gen)
        scale = cfg.zoom + (1 - cfg.zoom) * u[:, 0]
        offset = u[:, 1:3] * 2 - 1
        flip = (u[:, 3] < 0.5) & cfg.flip
        a = cfg.color_shift
        mu = ((u[:, 4:4 + channels] * 2 - 1) * a).view(n, channels, 1, 1)
        log_sigma = ((u[:, 4 + channels:] * 2 - 1) * a).view(n, channels, 1, 1)
        return cls(scale, offset, flip, mu, log_sigma)


# --------------------------------------------------------------------------- the method


class PlugInInversion:
    """Synthesise images the teacher classifies as given targets, with no BatchNorm needed.

    This class is the method's factory: core calls it with the configured ``config``.
    ``verifier`` (a verifier or a :class:`Teacher`) is evaluated at the checkpoints and on
    the result; ``student`` is handed to priors that need one.

    Example:
        >>> from invkit import CrossEntropy, load_teacher
        >>> teacher = load_teacher("digits-vit")
        >>> pii = PlugInInversion(teacher, CrossEntropy().objective(),
        ...                       config=PIIConfig(iterations=4, ensemble=2))
        >>> result = pii.generate([3, 1, 4], seed=0)
        >>> result.images01.shape, sorted(result.losses)
        (torch.Size([3, 3, 32, 32]), ['cross-entropy', 'total'])
    """

    def __init__(self, teacher: Teacher, objective: Objective | None = None, *,
                 config: PIIConfig | None = None, student: Teacher | None = None,
                 verifier=None):
        self.teacher = teacher
        self.objective = objective if objective is not None else default_objective()
        self.config = config or PIIConfig()
        self.student = student
        self.verifier = as_verifier(verifier)

    def generate(self, targets: Sequence[int] | torch.Tensor, seed: int = 0,
                 callback: Callable[[Checkpoint], None] | None = None) -> Generation:
        """Optimise one batch for ``targets``; the same images for the same seed and config."""
        cfg = self.config
        device = module_device(self.teacher.module)
        targets = _check_targets(targets, self.teacher.meta.num_classes, device)
        n, e = targets.numel(), cfg.ensemble
        size = cfg.resolution or self.teacher.meta.input_size
        stages = cfg.stages()
        total_iterations = sum(s.iterations for s in stages)
        channels = 1 if cfg.grayscale else len(self.teacher.meta.mean)

        # Everything random comes from one seeded CPU generator: the same images on every
        # device, in every process, on resume.
        gen = torch.Generator().manual_seed(int(seed))
        start = (0.5 + cfg.init_std * torch.randn(n, channels, size, size, generator=gen))
        x = start.clamp(0, 1).to(device).requires_grad_(True)
        ensemble_targets = targets.repeat_interleave(e)
        schedule = build_schedule(cfg.lr_schedule, kind="lr")
        amp = autocast(device, cfg.amp)
        module, student = self.teacher.module, self.student
        setup = Setup(teacher=self.teacher, student=student)
        last, timings, done = None, [], 0
        with frozen(module), frozen(student.module if student else None), \
                self.objective.attached(setup):
            for stage_index, stage in enumerate(stages):
                mask = center_mask(size, stage.downsample, device)
                # Fresh moments per stage: the newly freed border starts like the centre did.
                optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=cfg.betas)
                started = time.perf_counter()
                for i in range(stage.iterations):
                    lr = cfg.lr * schedule(i, stage.iterations)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    draw = Draw.sample(n * e, channels, cfg, gen)
                    view = self.view(x, draw, e)
                    with amp:
                        logits = module(view)
                        step = Step(inputs=view, logits=logits, targets=ensemble_targets,
                                    teacher=self.teacher, iteration=done)
                        total, terms = self.objective(step)
                    optimizer.zero_grad(set_to_none=True)
                    total.float().backward()
                    if stage.downsample > 1:
                        x.grad.mul_(mask)  # Centering: only the central square moves
                    optimizer.step()
                    with torch.no_grad():
                        x.clamp_(0, 1)
                    done += 1
                    last = (total.detach().float(), {k: v.detach() for k, v in terms.items()})
                    if callback is not None:
                        callback(self._checkpoint(x, targets, last, stage_index, stages, i,
                                                  done, total_iterations, lr))
                timings.append(time.perf_counter() - started)
        final = self.to_input(x.detach())
        return finish(self.teacher, final, targets, _to_floats(*last), verifier=self.verifier,
                      timings=timings, iterations=total_iterations, precision=cfg.amp)

    def to_input(self, x01: torch.Tensor) -> torch.Tensor:
        """The teacher's normalised input for images ``x01`` in [0, 1] (grey: every channel)."""
        channels = len(self.teacher.meta.mean)
        if x01.shape[1] != channels:
            x01 = x01.expand(-1, channels, -1, -1)
        return self.teacher.normalize(x01)

    def view(self, x: torch.Tensor, draw: Draw, e: int) -> torch.Tensor:
        """The step's ensemble: ``e`` augmented copies of every image, in the teacher's
        input space (copies of image ``k`` at rows ``k*e .. k*e+e-1``)."""
        cfg, device = self.config, x.device
        copies = x.repeat_interleave(e, dim=0)
        if cfg.zoom < 1:
            copies = zoom(copies, draw.scale.to(device, x.dtype), draw.offset.to(device, x.dtype))
        if cfg.flip:
            copies = torch.where(draw.flip.to(device).view(-1, 1, 1, 1),
                                 copies.flip(3), copies)
        if cfg.color_shift > 0:
            # In [0, 1] around mid-grey, before the teacher's normalisation; a grey image
            # gets one shift for all its channels, so it stays grey.
            copies = color_shift(copies - 0.5, draw.mu.to(device, x.dtype),
                                 draw.log_sigma.to(device, x.dtype)) + 0.5
        return self.to_input(copies)

    def _checkpoint(self, x, targets, last, stage_index, stages, i, done, total, lr):
        stage = stages[stage_index]
        checkpoint = done % self.config.save_every == 0 or done == total
        current = self.to_input(x.detach()) if checkpoint else None
        accuracy = None
        if checkpoint and self.verifier is not None:
            images01 = self.teacher.denormalize(current.float()).clamp(0, 1)
            pred = verifier_predictions(self.verifier, images01)
            accuracy = float((pred == targets.cpu()).float().mean())
        side = x.shape[-1] // stage.downsample
        return Checkpoint(
            stage=stage_index + 1, stages=len(stages), iteration=done, total_iterations=total,
            stage_iteration=i + 1, stage_iterations=stage.iterations, lr=lr,
            losses=_to_floats(*last) if checkpoint else None, inputs=current,
            verifier_accuracy=accuracy,
            description=f"centre {side}px" if stage.downsample > 1 else "")


def default_objective() -> Objective:
    """The method's default objective (its ``default_priors``: the class score alone)."""
    from invkit import build_objective, parse_prior
    from invkit_plugins.plugin_inversion.presets import DEFAULT_PRIORS

    return build_objective([parse_prior(p) for p in DEFAULT_PRIORS])


def _check_targets(targets, num_classes: int, device) -> torch.Tensor:
    targets = torch.as_tensor(list(targets) if not torch.is_tensor(targets) else targets,
                              dtype=torch.long).to(device)
    if targets.ndim != 1 or targets.numel() == 0:
        raise InvkitError("targets must be a non-empty list of class indices")
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise InvkitError(f"target {int(targets.max())} is out of range for a "
                          f"{num_classes}-class teacher (valid: 0..{num_classes - 1})")
    return targets


def _to_floats(total: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    # One transfer for all terms instead of one sync per value.
    values = torch.stack([t.float() for t in terms.values()] + [total.float()]).cpu().tolist()
    out = dict(zip(terms, values[:-1]))
    out["total"] = values[-1]
    return out
