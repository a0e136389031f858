"""DeepInversion (Yin et al., CVPR 2020) as an invkit plugin.

Registers the method ``deepinversion`` (``invkit run deepinversion``), the priors
``bn-stats`` and ``adi``, and the resolution plans of the three published settings.
The plugin is loaded through the ``invkit`` entry-point group, like any third-party one.

Python API::

    from invkit_plugins.deepinversion import DeepInversion, DIConfig
    result = DeepInversion(teacher, objective, config=DIConfig(iterations=500)).generate([1, 2])
"""

from __future__ import annotations

from invkit.hookspecs import hookimpl
from invkit.schedules import scale_plan
from invkit.specs import MethodSpec, Option, PriorSpec, ScheduleSpec
from invkit_plugins.deepinversion.adaptive import Competition
from invkit_plugins.deepinversion.bn_stats import BNStats
from invkit_plugins.deepinversion.method import DeepInversion, DIConfig, DIResult
from invkit_plugins.deepinversion.presets import PRESETS, SETTINGS, preset_priors

__all__ = ["DeepInversion", "DIConfig", "DIResult", "BNStats", "Competition", "PRESETS",
           "SETTINGS"]


def _make_command():
    from invkit_plugins.deepinversion.command import deepinversion

    return deepinversion


@hookimpl
def invkit_methods():
    yield MethodSpec(
        "deepinversion",
        "DeepInversion: match BatchNorm statistics to synthesise class images",
        command=_make_command,
        default_priors=tuple(preset_priors(PRESETS["imagenet"])),
    )


@hookimpl
def invkit_priors():
    yield PriorSpec(
        "bn-stats", "BatchNorm input statistics vs running statistics (DeepInversion)",
        factory=BNStats, default_weight=0.01,
        options=(Option("first_bn_multiplier", float, 10.0,
                        "weight of the first BatchNorm layer's term"),),
    )
    yield PriorSpec(
        "adi", "Adaptive DeepInversion competition: teacher/student disagreement",
        factory=Competition, default_weight=0.2,
        options=(
            Option("student", str, "", "student teacher spec (or the method's --student)"),
            Option("temperature", float, 3.0, "softmax temperature"),
            Option("detach", bool, False, "no gradient through the student"),
        ),
    )


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
