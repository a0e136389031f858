"""The bundled plugins' whole CLI surface, pinned by golden files (group h8).

``run METHOD --help`` shows every option's flags, help text, type, range and default, so a
changed string, ``min=``/``max=``, ``choices`` or ``metavar`` in a plugin's options is
caught; ``methods show`` and ``schedules show`` pin the method specs, presets, default
priors and the plan schedules' summaries and options; ``priors show`` the priors' help.
"""

from __future__ import annotations

import pytest

from tests.golden import assert_golden


@pytest.fixture(autouse=True)
def _width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")


@pytest.mark.parametrize("method", ["deepinversion", "fast", "pii"])
def test_run_method_help_golden(invoke, method):
    result = invoke("run", method, "--help")
    assert result.exit_code == 0
    assert_golden(f"h8-run-{method}-help", result.output)


@pytest.mark.parametrize("method", ["deepinversion", "fast", "pii"])
def test_methods_show_golden(invoke, method):
    result = invoke("methods", "show", method)
    assert result.exit_code == 0
    assert_golden(f"h8-methods-show-{method}", result.output)


@pytest.mark.parametrize("name", ["deepinversion-setting-0", "deepinversion-setting-1",
                                  "deepinversion-setting-2", "pii-centering"])
def test_schedules_show_golden(invoke, name):
    result = invoke("schedules", "show", name)
    assert result.exit_code == 0
    assert_golden(f"h8-schedules-show-{name}", result.output)


@pytest.mark.parametrize("name", ["bn-stats", "adi"])
def test_priors_show_golden(invoke, name):
    result = invoke("priors", "show", name)
    assert result.exit_code == 0
    assert_golden(f"h8-priors-show-{name}", result.output)


def test_presets_and_settings_golden():
    """Every field of every preset (summaries, weights, targets, options), as repr."""
    from invkit_plugins.deepinversion.presets import IMAGENET_TARGETS, PRESETS, SETTINGS
    from invkit_plugins.generative.presets import PRESETS as FAST_PRESETS
    from invkit_plugins.plugin_inversion.presets import PRESETS as PII_PRESETS

    lines = [repr(s) for s in SETTINGS.values()] + [repr(p) for p in PRESETS]
    lines += [repr(p) for p in FAST_PRESETS] + [repr(p) for p in PII_PRESETS]
    lines.append(repr(IMAGENET_TARGETS))
    assert_golden("h8-presets-repr", "\n".join(lines) + "\n")
