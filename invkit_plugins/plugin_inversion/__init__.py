"""Plug-In Inversion (Ghiasi et al., ICML 2022) as an invkit plugin: no BatchNorm needed.

Registers the method ``pii`` (core mounts it as ``invkit run pii``) and the Centering
plan ``pii-centering`` (a resolution plan: under DeepInversion the same stages are a
growing-resolution schedule, so it combines with DeepInversion on BatchNorm teachers).
The paper names no image prior (the augmentations replace one), so none is registered;
any prior can still be added with ``--prior``.

Python API::

    from invkit import run_method
    from invkit_plugins.plugin_inversion import PIIOptions
    run_method("pii", PIIOptions(iterations=300), teacher="digits-vit",
               images_per_class=10, output="generations/digits-vit-100")

    from invkit_plugins.plugin_inversion import PlugInInversion, PIIConfig   # one batch
    result = PlugInInversion(teacher, objective, config=PIIConfig(iterations=300)).generate([1, 2])
"""

from __future__ import annotations

from invkit import MethodSpec, Option, ScheduleSpec, hookimpl, scale_plan
from invkit_plugins.plugin_inversion.options import PIIOptions, configure
from invkit_plugins.plugin_inversion.presets import DEFAULT_PRIORS, PRESETS

__all__ = ["PlugInInversion", "PIIConfig", "PIIOptions", "configure", "PRESETS",
           "centering_plan"]


def __getattr__(name: str):
    # The loop imports torch: loaded on first use, so listings and --help stay fast.
    if name in ("PlugInInversion", "PIIConfig"):
        from invkit_plugins.plugin_inversion import method

        return getattr(method, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_generator(teacher, objective, *, config, student=None, verifier=None):
    """The method's factory: a :class:`~invkit_plugins.plugin_inversion.method.PlugInInversion`."""
    from invkit_plugins.plugin_inversion.method import PlugInInversion

    return PlugInInversion(teacher, objective, config=config, student=student,
                           verifier=verifier)


def centering_plan(iterations: int = 2000, stages: int = 3):
    """Centering's plan: ``stages`` stages, the optimised square doubling each time
    (downsample 2**(stages-1) ... 1); the whole image gets half the iterations.

    Example:
        >>> centering_plan(400)
        (Stage(iterations=100, downsample=4), Stage(iterations=100, downsample=2), Stage(iterations=200, downsample=1))
    """
    from invkit import InvkitError, Stage

    if stages < 1 or iterations < stages:
        raise InvkitError(f"pii-centering needs 1 <= stages <= iterations "
                          f"(got stages={stages}, iterations={iterations})")
    plan = tuple(Stage(1, 2 ** (stages - 1 - k)) for k in range(stages - 1))
    return scale_plan(plan + (Stage(max(1, stages - 1), 1),), iterations)


@hookimpl
def invkit_methods():
    yield MethodSpec(
        "pii",
        "Plug-In Inversion: class score under augmentation ensembles (no BatchNorm needed)",
        factory=make_generator, options=PIIOptions, configure=configure,
        default_priors=DEFAULT_PRIORS, presets=PRESETS, needs_batchnorm=False,
    )


@hookimpl
def invkit_schedules():
    yield ScheduleSpec(
        "pii-centering", "Plug-In Inversion's Centering: the optimised central square "
        "doubles each stage (a growing-resolution plan)", factory=centering_plan,
        kind="plan", options=(Option("iterations", int, 2000, "total iterations"),
                              Option("stages", int, 3, "stages (square doubles each)")))
