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
EXAMPLE = ROOT / "examples" / "invkit-example-plugin"


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
    assert list(target.glob("invkit_example_plugin-*.dist-info/entry_points.txt"))
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
            for r in rows] == [("example-tiny", "example-plugin", "example", 32, 10)]

    priors = run_invkit(installed, "priors", "list", "--json")
    assert priors.returncode == 0, priors.stderr
    by_name = {r["name"]: r for r in json.loads(priors.stdout)}
    assert by_name["example-brightness"]["provider"] == "example-plugin"
    assert [o["name"] for o in by_name["example-brightness"]["options"]] == ["target"]

    plugins = run_invkit(installed, "plugins", "--json")
    row = next(r for r in json.loads(plugins.stdout) if r["name"] == "example-plugin")
    assert row["version"] == "0.1.0"
    assert row["hooks"] == ["invkit_methods", "invkit_priors", "invkit_teachers"]


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


# ------------------------------------------------------- a third-party method, whole


def descent(site: Path, out: Path, *extra: str):
    return run_invkit(site, "run", "example-descent", "--teacher", "example-tiny",
                      "--bs", "3", "--num-batches", "4", "--steps", "6", "--device", "cpu",
                      "--quiet", "--output", str(out), *extra)


def image_bytes(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted((out / "images").rglob("*.png"))}


def test_example_method_gets_every_output_from_core(installed, tmp_path):
    out = tmp_path / "one"
    result = descent(installed, out)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len(image_bytes(out)) == 12
    assert (out / "grid.png").is_file() and (out / "progress" / "iter_00006.png").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["method"] == "example-descent"
    assert run["config"]["config"] == {"steps": 6, "lr": 0.05}
    assert run["config"]["objective"] == "1*cross-entropy + 0.001*tv-l2"
    helped = run_invkit(installed, "run", "--help")
    assert "example-descent" in helped.stdout and "deepinversion" in helped.stdout


def test_example_method_under_torchrun_and_resumed_after_sigterm(installed, tmp_path):
    import signal
    import time

    reference = tmp_path / "reference"
    assert descent(installed, reference).returncode == 0

    # Two ranks (gloo) write the same images as one process.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", INVKIT_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(installed), str(ROOT)]))
    two = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "invkit", "run", "example-descent", "--teacher", "example-tiny", "--bs", "3",
         "--num-batches", "4", "--steps", "6", "--device", "cpu", "--quiet",
         "--output", str(two)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert image_bytes(two) == image_bytes(reference)
    assert (two / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes()

    # SIGTERM mid-run, then --resume: the same images as the uninterrupted run.
    killed = tmp_path / "killed"
    many = ["--num-batches", "40"]
    full = tmp_path / "full"
    assert descent(installed, full, *many).returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "invkit", "run", "example-descent", "--teacher", "example-tiny",
         "--bs", "3", "--steps", "6", "--device", "cpu", "--quiet", "--output", str(killed),
         *many], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = killed / "state" / "batches" / "00001.json"
    deadline = time.monotonic() + 240
    while not record.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "--resume" in stderr and not (killed / "manifest.jsonl").exists()
    resumed = descent(installed, killed, *many, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert image_bytes(killed) == image_bytes(full)
