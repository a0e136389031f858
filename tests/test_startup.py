"""Commands that only read the registries never import torch (start-up stays fast)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from invkit.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    assert not done.code, done.code
print("TORCH-IMPORTED", "torch" in sys.modules)
"""


@pytest.mark.parametrize("args", [
    ["--version"], ["--help"], ["plugins"], ["priors", "list"], ["priors", "show", "bn-stats"],
    ["methods", "list"], ["methods", "show", "deepinversion"], ["run", "--help"],
    ["schedules", "list"], ["verifiers", "list"],
])
def test_light_commands_do_not_import_torch(args):
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("TORCH-IMPORTED False"), result.stdout[-500:]


def test_shell_completion_suggests_prior_names():
    import os

    env = dict(os.environ, COMP_WORDS="invkit run deepinversion --prior tv", COMP_CWORD="4",
               _INVKIT_COMPLETE="bash_complete")
    result = subprocess.run([sys.executable, "-m", "invkit"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.split() == ["plain,tv-l1", "plain,tv-l2"]
