"""DeepInversion (Yin et al., CVPR 2020) as an invkit plugin.

Registers the method ``deepinversion`` (core mounts it as ``invkit run deepinversion``),
the priors ``bn-stats`` and ``adi``, and the resolution plans of the three published
settings. The plugin is loaded through the ``invkit`` entry-point group, like any
third-party one, and imports only invkit's public API.

Python API::

    from invkit import run_method                       # a whole dataset, as the CLI
    from invkit_plugins.deepinversion import DIOptions
    run_method("deepinversion", DIOptions(iterations=400), teacher="digits",
               images_per_class=10, output="generations/digits-100")

    from invkit_plugins.deepinversion import DeepInversion, DIConfig   # one batch
    result = DeepInversion(teacher, objective, config=DIConfig(iterations=500)).generate([1, 2])
"""

from __future__ import annotations

from invkit import MethodSpec, Option, PriorFlag, ScheduleSpec, hookimpl, scale_plan
from invkit_plugins.deepinversion.adaptive import Competition
from invkit_plugins.deepinversion.bn_stats import BNStats
from invkit_plugins.deepinversion.options import DIOptions, configure
from invkit_plugins.deepinversion.presets import DEFAULT_PRIORS, PRESETS, SETTINGS

__all__ = ["DeepInversion", "DIConfig", "DIOptions", "configure", "BNStats", "Competition",
           "PRESETS", "SETTINGS"]


def __getattr__(name: str):
    # The loop imports torch: loaded on first use, so listings and --help stay fast.
    if name in ("DeepInversion", "DIConfig"):
        from invkit_plugins.deepinversion import method

        return getattr(method, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_generator(teacher, objective, *, config, student=None, verifier=None):
    """The method's factory: a :class:`~invkit_plugins.deepinversion.method.DeepInversion`."""
    from invkit_plugins.deepinversion.method import DeepInversion

    return DeepInversion(teacher, objective, config=config, student=student,
                         verifier=verifier)

#: The published script's coefficient flags, as shorthands for prior weights.
PRIOR_FLAGS = (
    PriorFlag("main_loss_multiplier", "cross-entropy",
              ("--main-loss-multiplier", "--main_loss_multiplier")),
    PriorFlag("r_feature", "bn-stats", ("--r-feature", "--r_feature")),
    PriorFlag("first_bn_multiplier", "bn-stats", ("--first-bn-multiplier",
                                                  "--first_bn_multiplier"),
              option="first_bn_multiplier"),
    PriorFlag("tv_l1", "tv-l1", ("--tv-l1", "--tv_l1")),
    PriorFlag("tv_l2", "tv-l2", ("--tv-l2", "--tv_l2")),
    PriorFlag("l2", "l2", ("--l2",)),
    PriorFlag("adi_scale", "adi", ("--adi-scale", "--adi_scale"),
              help="Weight of prior adi (Adaptive DeepInversion; needs --student)."),
)


@hookimpl
def invkit_methods():
    yield MethodSpec(
        "deepinversion",
        "DeepInversion: match BatchNorm statistics to synthesise class images",
        factory=make_generator, options=DIOptions, configure=configure,
        default_priors=DEFAULT_PRIORS, presets=PRESETS, prior_flags=PRIOR_FLAGS,
        needs_batchnorm=True,
    )


@hookimpl
def invkit_priors():
    yield BNStats.spec
    yield Competition.spec


def _setting_plan(setting: int):
    default = sum(s.iterations for s in SETTINGS[setting].plan)

    def factory(iterations: int = default):
        return scale_plan(SETTINGS[setting].plan, iterations)

    return ScheduleSpec(
        f"deepinversion-setting-{setting}", SETTINGS[setting].summary, factory=factory,
        kind="plan", options=(Option("iterations", int, default, "total iterations"),),
    )


@hookimpl
def invkit_schedules():
    for setting in sorted(SETTINGS):
        yield _setting_plan(setting)
