"""The run pipeline's own safety (issue 17): a diverged batch is never marked complete,
damaged resume state is repaired or explained, the output lock, validation before any file."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from invkit.errors import InvkitError
from invkit.lock import OutputLock
from invkit.pipeline import generate_dataset, plan_batches
from tests.dataset_fakes import fake_generate
from tests.test_dataset import CONFIG, NAMES, files_with_bytes, run

PLAN = dict(num_classes=10, batch_size=3, num_batches=3, seed=4)


def test_a_non_finite_batch_stops_the_run_and_is_redone_on_resume(tmp_path):
    plan = plan_batches(**PLAN)

    def diverging(batch):
        result = fake_generate(batch)
        if batch.index == 1:
            return dataclasses.replace(result, losses={**result.losses, "total": math.nan})
        return result

    with pytest.raises(InvkitError, match=r"batch 2: the loss total became non-finite"):
        run(tmp_path, plan, generate=diverging)
    records = sorted(p.name for p in (tmp_path / "state" / "batches").glob("*.json"))
    assert records == ["00000.json"]  # the diverged batch is not marked complete
    assert not (tmp_path / "manifest.jsonl").exists()
    run(tmp_path, plan, resume=True)
    reference = tmp_path.parent / "reference"
    run(reference, plan)
    ours = {k: v for k, v in files_with_bytes(tmp_path).items()
            if k.startswith("images") or k == "manifest.jsonl"}
    theirs = {k: v for k, v in files_with_bytes(reference).items()
              if k.startswith("images") or k == "manifest.jsonl"}
    assert ours == theirs


def test_nan_images_are_refused_too(tmp_path):
    def nan_images(batch):
        result = fake_generate(batch)
        return dataclasses.replace(result, images01=result.images01 * math.nan)

    with pytest.raises(InvkitError, match="images are not finite"):
        run(tmp_path, plan_batches(**PLAN), generate=nan_images)


def test_resume_regenerates_deleted_images_and_damaged_records(tmp_path):
    plan = plan_batches(**PLAN)
    run(tmp_path, plan)
    before = files_with_bytes(tmp_path / "images")
    manifest = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[4])
    (tmp_path / manifest["file"]).unlink()                       # an image of batch 1
    (tmp_path / "state" / "batches" / "00002.json").write_text("{trunc")  # a damaged record
    redone = []

    def counting(batch):
        redone.append(batch.index)
        return fake_generate(batch)

    run(tmp_path, plan, generate=counting, resume=True)
    assert redone == [1, 2]
    assert files_with_bytes(tmp_path / "images") == before


def test_a_damaged_state_file_is_one_clear_error(tmp_path):
    plan = plan_batches(**PLAN)
    run(tmp_path, plan)
    (tmp_path / "state" / "run.json").write_text('{"plan": ')
    with pytest.raises(InvkitError) as refused:
        run(tmp_path, plan, resume=True)
    assert "\n" not in str(refused.value)
    assert "--overwrite" in str(refused.value) or "no invkit run state" in str(refused.value)


def test_a_second_run_on_a_locked_directory_is_refused(tmp_path):
    with OutputLock(tmp_path / "out"):
        with pytest.raises(InvkitError, match="in use by another invkit process"):
            generate_dataset(plan_batches(**PLAN), fake_generate, tmp_path / "out",
                             config=CONFIG, num_classes=10, class_names=NAMES)
    assert not (tmp_path / "out" / "state").exists()  # refused before touching anything
    run(tmp_path / "out", plan_batches(**PLAN))  # the lock is free again


@pytest.mark.parametrize("args, message", [
    (["--resolution", "100000"], "needs about"),
    (["--device", "cuda:x"], "device 'cuda:x' is not valid"),
    (["--plan", "deepinversion-setting-0", "--resolution", "33"], "not divisible"),
    (["--targets", "3,12"], "target 12 is out of range"),
])
def test_user_errors_are_found_before_the_output_exists(invoke, tmp_path, args, message):
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        result = invoke("run", "deepinversion", "--teacher", "digits", "--output", str(out),
                        *args, *extra)
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1
        assert not out.exists()
