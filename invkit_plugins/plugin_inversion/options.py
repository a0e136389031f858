"""Plug-In Inversion's own options (core adds the shared ones), and how they resolve.

Every field is ``None`` until given: then the preset's value applies, else the method's
default (:class:`~invkit_plugins.plugin_inversion.method.PIIConfig`). :func:`configure`
turns the result into the loop's config, validated before any weights load.

Example:
    >>> from invkit import Context, TeacherMeta
    >>> config = configure(PIIOptions(iterations=300, ensemble=4), Context(TeacherMeta("t", 32, 10)))
    >>> config.ensemble, config.stages()[-1]
    (4, Stage(iterations=150, downsample=1))
"""

from __future__ import annotations

from dataclasses import dataclass

from invkit import Context, InvkitError, check_memory, estimate_inversion_bytes, option


@dataclass(frozen=True)
class PIIOptions:
    """What a user may set on Plug-In Inversion (``None``: the preset's, else the default)."""

    iterations: int | None = option(
        None, "Total iterations, split across the Centering plan's stages in proportion.",
        min=1)
    lr: float | None = option(None, "Adam learning rate (on pixels in [0, 1]).", min=1e-12)
    ensemble: int | None = option(
        None, "Augmented copies of each image per step (the ensemble).", min=1)
    color_shift: float | None = option(
        None, "ColorShift range a: mu ~ U(-a, a), sigma = exp(U(-a, a)) per channel "
              "(0: off).", min=0, max=5)
    zoom: float | None = option(
        None, "Zoom: smallest random crop side, as a fraction of the image (1: off).",
        min=0.01, max=1)
    plan: str | None = option(
        None, "Centering plan: a plan schedule NAME[,k=v] ('invkit schedules list'; "
              "default pii-centering). Stage downsample d optimises the central size/d "
              "square.", metavar="NAME")
    lr_schedule: str | None = option(
        None, "Learning-rate schedule NAME[,k=v], per stage (default cosine).",
        metavar="NAME")
    flip: bool | None = option(None, "Random horizontal flips of the copies.",
                               flags=("--flip/--no-flip",))
    grayscale: bool | None = option(
        None, "Optimise one grey image (default: on for teachers trained on grey images, "
              "e.g. digits).", flags=("--grayscale/--color",))
    resolution: int | None = option(None, "Image size (default: the teacher's input size).",
                                    min=2)


def configure(options: PIIOptions, context: Context):
    """The loop's configuration for ``options`` on a teacher described by ``context``."""
    from invkit import build_schedule
    from invkit_plugins.plugin_inversion.method import PIIConfig

    given = {name: getattr(options, name) for name in
             ("iterations", "lr", "ensemble", "color_shift", "zoom", "lr_schedule", "flip",
              "resolution") if getattr(options, name) is not None}
    if "lr_schedule" in given:
        build_schedule(given["lr_schedule"], kind="lr")  # a bad name fails now
    plan = build_schedule(options.plan or "pii-centering", kind="plan")
    grayscale = context.meta.grayscale if options.grayscale is None else options.grayscale
    config = PIIConfig(plan=tuple(plan), grayscale=grayscale, amp=context.precision,
                       save_every=context.checkpoint_every, **given)
    size = config.resolution or context.meta.input_size
    for stage in config.stages():
        if stage.downsample > size:
            raise InvkitError(f"the plan's downsample {stage.downsample} leaves no pixel of "
                              f"a {size} px image to optimise")
    # The teacher sees `ensemble` copies of every image per step.
    check_memory(estimate_inversion_bytes(context.batch_size * config.ensemble, 3, size),
                 f"a batch of {context.batch_size} images x {config.ensemble} copies at "
                 f"{size} px", context.device)
    return config
