"""The ``fast`` method's options (core adds the shared ones) and how they resolve.

Every field is ``None`` until given: then the preset's value applies, else the default
below. :func:`configure` turns the result into :class:`FastConfig`, validated before any
weights load (it is part of the run's identity, compared on ``--resume``).

Example:
    >>> from invkit import Context, TeacherMeta
    >>> config = configure(FastOptions(train_steps=50), Context(TeacherMeta("t", 32, 10)))
    >>> config.train_steps, config.steps_per_batch
    (50, 0)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from invkit import Context, InvkitError, check_memory, estimate_inversion_bytes, option


@dataclass(frozen=True)
class FastOptions:
    """What a user may set on the ``fast`` method (``None``: the preset's, else default)."""

    train_steps: int | None = option(
        None, "Generator training: gradient steps in all (warm-up plus meta-learning).",
        min=0)
    train_bs: int | None = option(None, "Generator training: images per step.", min=2)
    lr: float | None = option(None, "Generator training: Adam learning rate.", min=1e-12)
    steps_per_batch: int | None = option(
        None, "Fast-K: fine-tuning steps per batch from a meta-learned (Reptile) start; "
              "0 trains the generator plainly and samples each batch with one forward pass.",
        flags=("--steps-per-batch",), min=0)
    warmup_steps: int | None = option(
        None, "Plain training steps before meta-learning (default: half of --train-steps; "
              "only with --steps-per-batch > 0).", min=0)
    meta_lr: float | None = option(
        None, "Reptile step: how far the shared start moves towards the adapted weights.",
        min=1e-6, max=1.0)
    inner_lr: float | None = option(
        None, "Adam learning rate of the K fine-tuning steps (default: --lr).", min=1e-12)
    diversity: float | None = option(
        None, "Weight of the mode-seeking term: images of one class must differ as much "
              "as their latents do (0: off).", min=0)
    z_dim: int | None = option(None, "Latent size.", min=1)
    width: int | None = option(None, "Generator channels (the first feature map; halved at each "
                                       "upsampling).", min=4)
    jitter: int | None = option(None, "Random shift (pixels) of the teacher's view.", min=0)
    flip: bool | None = option(None, "Random horizontal flips of the teacher's view.",
                               flags=("--flip/--no-flip",))
    generator_seed: int | None = option(
        None, "Seed of the generator's training (every process and a resumed run train "
              "the same generator).", min=0)
    generator: str | None = option(
        None, "Sample from this saved generator (generator.safetensors) with no training.",
        metavar="PATH")
    save_generator: str | None = option(
        None, "Write the trained generator (safetensors with metadata) to PATH.",
        metavar="PATH")


#: The method's own defaults (a preset or the user overrides them).
DEFAULTS = FastOptions(train_steps=600, train_bs=64, lr=1e-3, steps_per_batch=0,
                       meta_lr=0.5, diversity=0.0, z_dim=64, width=32, jitter=0,
                       flip=False, generator_seed=0)


@dataclass(frozen=True)
class FastConfig:
    """The resolved configuration of the generator method (see :class:`FastOptions`).

    ``generator_sha256`` identifies a ``--generator`` file, so that resuming with another
    file is refused; ``grayscale`` follows the teacher (one grey channel, repeated).
    """

    train_steps: int = 600
    train_bs: int = 64
    lr: float = 1e-3
    steps_per_batch: int = 0
    warmup_steps: int = 300
    meta_lr: float = 0.5
    inner_lr: float = 1e-3
    diversity: float = 0.0
    z_dim: int = 64
    width: int = 32
    jitter: int = 0
    flip: bool = False
    grayscale: bool = False
    generator_seed: int = 0
    generator: str | None = None
    generator_sha256: str | None = None
    save_generator: str | None = None
    amp: str = "fp32"
    save_every: int = 100

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def configure(options: FastOptions, context: Context) -> FastConfig:
    """The generator's configuration for ``options`` on a teacher described by ``context``."""
    from invkit import merge_options

    o = merge_options(DEFAULTS, options)
    warmup = o.train_steps // 2 if o.warmup_steps is None else o.warmup_steps
    if o.steps_per_batch and warmup > o.train_steps:
        raise InvkitError(f"--warmup-steps {warmup} is more than --train-steps {o.train_steps}")
    config = FastConfig(
        train_steps=o.train_steps, train_bs=o.train_bs, lr=o.lr,
        steps_per_batch=o.steps_per_batch, warmup_steps=warmup if o.steps_per_batch else 0,
        meta_lr=o.meta_lr, inner_lr=o.lr if o.inner_lr is None else o.inner_lr,
        diversity=o.diversity, z_dim=o.z_dim, width=o.width, jitter=o.jitter, flip=o.flip,
        grayscale=context.meta.grayscale, generator_seed=o.generator_seed,
        amp=context.precision, save_every=context.checkpoint_every,
        save_generator=o.save_generator)
    # A saved generator fixes the network's shape and needs no training.
    config = dataclasses.replace(config, **_loaded(o.generator, context))
    if config.save_generator and Path(config.save_generator).is_dir():
        raise InvkitError(f"--save-generator {config.save_generator} is a directory: give a "
                          "file name (e.g. generator.safetensors)")
    check_memory(estimate_inversion_bytes(max(config.train_bs, context.batch_size), 3,
                                          context.meta.input_size),
                 f"generator training on batches of {config.train_bs}", context.device)
    return config


def _loaded(path: str | None, context: Context) -> dict:
    """``generator``/``generator_sha256``/shape for a ``--generator`` file, checked now."""
    if not path:
        return {}
    from invkit_plugins.generative.network import file_sha256, read_spec

    spec, _ = read_spec(path)
    meta = context.meta
    if (spec.size, spec.num_classes) != (meta.input_size, meta.num_classes):
        raise InvkitError(
            f"--generator {path} makes {spec.num_classes}-class images at {spec.size} px, "
            f"but the teacher takes {meta.num_classes} classes at {meta.input_size} px")
    return {"generator": str(path), "generator_sha256": file_sha256(path),
            "z_dim": spec.z_dim, "width": spec.width, "grayscale": spec.channels == 1,
            "train_steps": 0, "warmup_steps": 0}
