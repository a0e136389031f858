"""DeepInversion's own options (core adds the shared ones), and how they resolve.

Every field is ``None`` until given: then the preset's value applies, else the published
default. :func:`configure` turns the result into the loop's :class:`DIConfig`, validated
before any weights load (it is part of the run's identity, compared on ``--resume``).

Example:
    >>> from invkit import Context, TeacherMeta
    >>> config = configure(DIOptions(setting_id=1, iterations=300), Context(TeacherMeta("t", 32, 10)))
    >>> config.stages(), config.betas
    ((Stage(iterations=300, downsample=1),), (0.5, 0.9))
"""

from __future__ import annotations

from dataclasses import dataclass

from invkit import Context, InvkitError, check_memory, estimate_inversion_bytes, option


@dataclass(frozen=True)
class DIOptions:
    """What a user may set on DeepInversion (``None``: the preset's, else the default)."""

    setting_id: int | None = option(
        None, "Published setting: 0 multi-resolution 2k@half+1k@full, 1 2k@full, 2 20k@full "
              "(Adam betas and clipping follow it).", flags=("--setting-id", "--setting_id"),
        choices=(0, 1, 2))
    plan: str | None = option(
        None, "Resolution plan: a plan schedule NAME[,k=v] ('invkit schedules list'; "
              "default: the setting's).", metavar="NAME")
    iterations: int | None = option(
        None, "Total iterations, split across the plan's stages in proportion.", min=1)
    lr: float | None = option(None, "Adam learning rate.", min=1e-12)
    lr_schedule: str | None = option(
        None, "Learning-rate schedule NAME[,k=v] ('invkit schedules list'; default "
              "warmup-cosine, per stage).", metavar="NAME")
    flip: bool | None = option(
        None, "Random horizontal flips.", flags=("--do-flip/--no-flip", "--do_flip/--no_flip"))
    grayscale: bool | None = option(
        None, "Optimise one grey image shared by all input channels (default: on for "
              "teachers trained on grey images, e.g. digits).", flags=("--grayscale/--color",))
    jitter: int | None = option(None, "Maximum random shift in pixels (full resolution).",
                                min=0)
    resolution: int | None = option(None, "Image size (default: the teacher's input size).",
                                    min=2)
    compile: bool | None = option(
        None, "torch.compile the teacher's forward (the priors' hooks traced in) and its "
              "backward; falls back to eager with a warning where compiling fails. Off by "
              "default: slower than eager for ResNet-18 on CPU in this project's benchmark "
              "(README).",
        flags=("--compile/--no-compile",))
    channels_last: bool | None = option(
        None, "Channels-last memory format for the teacher and the images (on by default: "
              "7-25% faster convolutions on CPU in this project's benchmark, README, and "
              "the usual layout on GPUs); --no-channels-last keeps the contiguous layout.",
        flags=("--channels-last/--no-channels-last",))
    store_best_images: bool | None = option(
        None, "Accepted for compatibility: final images are always the lowest-loss iterate.",
        flags=("--store-best-images", "--store_best_images"))


def configure(options: DIOptions, context: Context):
    """The loop's configuration for ``options`` on a teacher described by ``context``."""
    from invkit import build_schedule
    from invkit_plugins.deepinversion.method import DIConfig
    from invkit_plugins.deepinversion.presets import SETTINGS

    setting = SETTINGS[0 if options.setting_id is None else options.setting_id]
    plan = build_schedule(options.plan, kind="plan") if options.plan else setting.plan
    given = {name: getattr(options, name) for name in ("iterations", "lr", "lr_schedule",
                                                       "flip", "jitter", "resolution",
                                                       "compile", "channels_last")
             if getattr(options, name) is not None}
    if given.get("channels_last") is True:
        # The default already: recorded as unset, so a resume with or without the flag
        # (and runs recorded before it existed) has the same identity.
        del given["channels_last"]
    if "lr_schedule" in given:
        build_schedule(given["lr_schedule"], kind="lr")  # a bad name fails now
    grayscale = context.meta.grayscale if options.grayscale is None else options.grayscale
    config = DIConfig(plan=tuple(plan), betas=setting.betas, clip=setting.clip,
                      grayscale=grayscale, amp=context.precision,
                      save_every=context.checkpoint_every, **given)
    size = config.resolution or context.meta.input_size
    for stage in config.stages():
        if size % stage.downsample:
            raise InvkitError(f"resolution {size} is not divisible by the plan's downsample "
                              f"factor {stage.downsample}: choose a multiple of it")
    # The teacher sees three channels even when one grey image is optimised.
    check_memory(estimate_inversion_bytes(context.batch_size, 3, size),
                 f"a batch of {context.batch_size} images at {size} px", context.device)
    return config
