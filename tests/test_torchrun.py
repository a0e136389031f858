"""Generation under torchrun (gloo, 2 CPU processes) makes the same dataset as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from invkit.pipeline import RunInterrupted, generate_dataset, plan_batches
from tests.dataset_fakes import fake_generate
from tests.test_dataset import files_with_bytes
from tests.torchrun_worker import CONFIG, PLAN, write

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args: str, nproc: str = "2", timeout: int = 150) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", nproc,
         *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def dataset_files(root: Path) -> dict:
    # run.json differs by design (timings, world size); state/ holds per-batch records.
    return {k: v for k, v in files_with_bytes(root).items()
            if k != "run.json" and not k.startswith("state")}


def test_two_ranks_write_the_same_dataset_as_one(tmp_path):
    """png: two ranks resume a run one process started; safetensors: a fresh two-rank run."""
    plan = plan_batches(**PLAN)

    def interrupted(batch):
        if batch.index == 2:
            raise KeyboardInterrupt
        return fake_generate(batch)

    with pytest.raises(RunInterrupted):
        generate_dataset(plan, interrupted, tmp_path / "two" / "png", config=CONFIG,
                         num_classes=10, class_names=[f"c{i}" for i in range(10)])
    result = torchrun(str(ROOT / "tests" / "torchrun_worker.py"), str(tmp_path / "two"), "--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    write(tmp_path / "one")  # the same plan, uninterrupted, in this single process

    for fmt, ranks, batches in (("png", [0, 0, 0, 1, 0], 3), ("safetensors", [0, 1, 0, 1, 0], 5)):
        one, two = dataset_files(tmp_path / "one" / fmt), dataset_files(tmp_path / "two" / fmt)
        assert sorted(one) == sorted(two) and one == two, fmt  # same files, same bytes
        run_json = json.loads((tmp_path / "two" / fmt / "run.json").read_text())
        assert run_json["last_session"]["world_size"] == 2
        assert run_json["last_session"]["batches"] == batches
        # Disjoint shares of what remained: remaining[rank::2].
        assert [b["rank"] for b in run_json["batches"]] == ranks, fmt
    assert len(list((tmp_path / "two" / "png" / "images").rglob("*.png"))) == 15
    assert len(os.listdir(tmp_path / "two" / "safetensors" / "shards")) == 4


def random_digits_weights(path: Path) -> Path:
    """Seeded random weights for the bundled digits network: every process loads the same."""
    import torch

    from invkit.teachers import load_teacher

    torch.manual_seed(0)
    torch.save(load_teacher("digits", weights="none").module.state_dict(), path)
    return path


def test_deepinversion_command_under_torchrun_matches_one_process(tmp_path):
    weights = random_digits_weights(tmp_path / "digits.pt")
    command = ["-m", "invkit", "run", "deepinversion", "--teacher", "digits", "--weights",
               str(weights), "--bs", "4", "--iterations", "3", "--num-batches", "3", "--device",
               "cpu", "--quiet", "--save-every", "2"]
    outputs = {}
    for nproc in ("1", "2"):
        outputs[nproc] = tmp_path / f"np{nproc}"
        result = torchrun(*command, "--output", str(outputs[nproc]), nproc=nproc)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one, two = dataset_files(outputs["1"]), dataset_files(outputs["2"])
    assert len([k for k in one if k.startswith("images")]) == 12
    assert sorted(one) == sorted(two) and one == two  # images, manifest, grid, progress grids
    ranks = [b["rank"] for b in json.loads((outputs["2"] / "run.json").read_text())["batches"]]
    assert ranks == [0, 1, 0]
