"""The example plugin package, installed for real: entry points found through its
dist-info metadata, its teacher and prior listed, and an inversion run with its teacher."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "invkit-example-teacher"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example package pip-installed into a throwaway target directory."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this environment")
    tmp = tmp_path_factory.mktemp("example-plugin")
    source = tmp / "src"
    # Build from a copy, so the checkout gets no build/ or egg-info folders.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
                   check=True, capture_output=True, text=True)
    assert list(target.glob("invkit_example_teacher-*.dist-info/entry_points.txt"))
    return target


def run_invkit(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["INVKIT_OFFLINE"] = "1"
    env.pop("INVKIT_NO_ENTRYPOINTS", None)
    return subprocess.run([sys.executable, "-m", "invkit", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_example_teacher_and_prior_are_listed(installed):
    teachers = run_invkit(installed, "teachers", "list", "--include", "example-*", "--json")
    assert teachers.returncode == 0, teachers.stderr
    rows = json.loads(teachers.stdout)
    assert [(r["name"], r["provider"], r["source"], r["input_size"], r["num_classes"])
            for r in rows] == [("example-tiny", "example-teacher", "example", 32, 10)]

    priors = run_invkit(installed, "priors", "list", "--json")
    assert priors.returncode == 0, priors.stderr
    by_name = {r["name"]: r for r in json.loads(priors.stdout)}
    assert by_name["example-brightness"]["provider"] == "example-teacher"
    assert [o["name"] for o in by_name["example-brightness"]["options"]] == ["target"]

    plugins = run_invkit(installed, "plugins", "--json")
    row = next(r for r in json.loads(plugins.stdout) if r["name"] == "example-teacher")
    assert row["version"] == "0.1.0"
    assert row["hooks"] == ["invkit_priors", "invkit_teachers"]


def test_not_installed_means_not_listed():
    # The control: without the install the names are absent (the test above is not vacuous).
    result = run_invkit(Path("/nonexistent"), "teachers", "list", "--include", "example-*",
                        "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []


def test_short_inversion_with_the_example_teacher(installed, tmp_path):
    out = tmp_path / "run"
    result = run_invkit(installed, "run", "deepinversion", "--teacher", "example-tiny",
                        "--prior", "example-brightness:0.1,target=0.4", "--iterations", "4",
                        "--bs", "4", "--output", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 4
    assert all((out / m["file"]).is_file() for m in manifest)
    run = json.loads((out / "run.json").read_text())
    assert "example-brightness" in json.dumps(run)
