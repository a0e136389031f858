"""invkit.pipeline: the batch plan, the written dataset, resume, signals, safetensors shards."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import invkit.pipeline.layout as layout_module
from invkit.pipeline import (
    Batch, GeneratedBatch, RunInterrupted, batch_seed, generate_dataset, plan_batches, resume_command,
)
from invkit.errors import InvkitError
from invkit.output import to_uint8
from tests.dataset_fakes import fake_generate

NAMES = [f"class {i}" for i in range(10)]
CONFIG = {"lr": 0.1, "seed": 0, "priors": {"bn-stats": 0.01}}  # the run's identity


def run(out, plan, generate=fake_generate, **kwargs):
    options = dict(config=CONFIG, num_classes=10, class_names=NAMES)
    options.update(kwargs)
    return generate_dataset(plan, generate, out, **options)


def files_with_bytes(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = open(path, "rb").read()
    return found


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- plan


def test_plan_images_per_class_is_exact():
    plan = plan_batches(num_classes=10, batch_size=8, images_per_class=5)
    counts = Counter(t for b in plan for t in b.targets)
    assert counts == {c: 5 for c in range(10)}
    assert [len(b.targets) for b in plan] == [8] * 6 + [2]  # 50 images, last batch smaller
    assert [b.index for b in plan] == list(range(7))


def test_plan_num_batches_is_balanced_and_cycles_given_targets():
    plan = plan_batches(num_classes=10, batch_size=4, num_batches=5)
    counts = Counter(t for b in plan for t in b.targets)
    assert sum(counts.values()) == 20 and max(counts.values()) - min(counts.values()) <= 1
    assert set(counts) == set(range(10))
    picked = plan_batches(num_classes=1000, batch_size=4, targets=[7, 42], num_batches=2)
    assert [b.targets for b in picked] == [(7, 42, 7, 42), (7, 42, 7, 42)]
    assert len(plan_batches(num_classes=10, batch_size=3)) == 1  # default: one batch


def test_plan_random_labels_are_balanced_and_seeded():
    a = plan_batches(num_classes=10, batch_size=8, images_per_class=4, random_labels=True, seed=1)
    b = plan_batches(num_classes=10, batch_size=8, images_per_class=4, random_labels=True, seed=1)
    c = plan_batches(num_classes=10, batch_size=8, images_per_class=4, random_labels=True, seed=2)
    ordered = plan_batches(num_classes=10, batch_size=8, images_per_class=4)
    assert a == b and a != c
    assert [x.targets for x in a] != [x.targets for x in ordered]
    assert Counter(t for x in a for t in x.targets) == {k: 4 for k in range(10)}


def test_batch_seed_depends_on_run_seed_and_index_only():
    short = plan_batches(num_classes=10, batch_size=4, num_batches=3, seed=5)
    long = plan_batches(num_classes=10, batch_size=2, num_batches=9, seed=5, random_labels=True)
    assert [b.seed for b in short] == [b.seed for b in long[:3]] == [batch_seed(5, i) for i in range(3)]
    assert len({b.seed for b in long}) == 9
    assert batch_seed(6, 0) != batch_seed(5, 0)
    # Regenerating one batch alone gives the same images as in the full run.
    assert torch.equal(fake_generate(long[4]).images01,
                       fake_generate(Batch(4, long[4].targets, batch_seed(5, 4))).images01)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_batches": 2, "images_per_class": 2}, "not both"),
    ({"targets": [3, 10]}, "target 10 is out of range"),
    ({"num_batches": 0}, "num_batches must be at least 1"),
    ({"images_per_class": -1}, "images_per_class"),
])
def test_plan_rejects_bad_input(kwargs, match):
    with pytest.raises(InvkitError, match=match):
        plan_batches(num_classes=10, batch_size=4, **kwargs)


# ----------------------------------------------------------------------------- writing


def test_png_dataset_files_manifest_grid_and_run_json(tmp_path):
    plan = plan_batches(num_classes=10, batch_size=4, num_batches=3, seed=0)
    handler = signal.getsignal(signal.SIGINT)
    summary = run(tmp_path / "out", plan)
    out = tmp_path / "out"
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored

    rows = manifest(out)
    assert [(r["batch"], r["index"]) for r in rows] == [(b, i) for b in range(3) for i in range(4)]
    pngs = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png"))
    assert pngs == sorted(r["file"] for r in rows)
    for batch in plan:
        expected = to_uint8(fake_generate(batch).images01)
        for i, target in enumerate(batch.targets):
            row = rows[batch.index * 4 + i]
            assert row["file"] == f"images/{target:03d}_class_{target}/{batch.index:05d}_{i:03d}.png"
            assert (row["target"], row["class_name"], row["seed"]) == (target, NAMES[target], batch.seed)
            with Image.open(out / row["file"]) as png:
                assert torch.equal(torch.from_numpy(np.array(png)).permute(2, 0, 1), expected[i])

    with Image.open(out / "grid.png") as grid:  # all 12 images (< 100): 4 x 3 grid of 8 px tiles
        assert grid.size == (4 * 10 + 2, 3 * 10 + 2)
    written = json.loads((out / "run.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["config"] == CONFIG and written["num_images"] == 12 and written["complete"]
    assert written["teacher_accuracy"] == pytest.approx(9 / 12)  # 1 wrong per batch of 4
    assert written["verifier_accuracy"] == 1.0
    assert written["losses"] == {"main": 0.5, "total": 1.0}
    assert [b["index"] for b in written["batches"]] == [0, 1, 2]
    assert written["batches"][0]["stats"]["timings"] == {"stage1": 0.1}
    assert set(written["versions"]) >= {"invkit", "torch", "torchvision"}
    assert written["last_session"]["batches"] == 3 and written["last_session"]["world_size"] == 1


def test_single_batch_run_lifts_stats_and_refuses_non_empty(tmp_path):
    plan = plan_batches(num_classes=10, batch_size=3)
    summary = run(tmp_path, plan)
    assert summary["stats"]["it_per_s"] == 10.0 and summary["num_batches"] == 1
    with pytest.raises(InvkitError, match="--resume"):
        run(tmp_path, plan)
    run(tmp_path, plan, overwrite=True)


def test_progress_protocol_gets_global_counts(tmp_path):
    calls = []

    class Recorder:
        def batch_start(self, batch, done, total):
            calls.append(("start", batch.index, done, total))

        def batch_done(self, done, total):
            calls.append(("done", done, total))

    run(tmp_path, plan_batches(num_classes=10, batch_size=2, num_batches=2), progress=Recorder())
    assert calls == [("done", 0, 2), ("start", 0, 0, 2), ("done", 1, 2), ("start", 1, 1, 2),
                     ("done", 2, 2)]


def test_generate_must_return_the_planned_targets(tmp_path):
    def wrong(batch):
        result = fake_generate(batch)
        return GeneratedBatch(result.images01, result.targets.flip(0), result.teacher_pred,
                                      result.teacher_conf)

    with pytest.raises(ValueError, match="targets"):
        run(tmp_path, plan_batches(num_classes=10, batch_size=3), generate=wrong)


# ----------------------------------------------------------------------------- resume


def test_resume_skips_complete_batches_and_redoes_the_cut_one(tmp_path, monkeypatch):
    plan = plan_batches(num_classes=10, batch_size=4, num_batches=4, seed=3)
    reference = tmp_path / "reference"
    run(reference, plan)

    out = tmp_path / "out"
    encode = layout_module.png_bytes
    written = []

    def cut_off(image):  # Ctrl-C arrives while batch 2's third image is being written
        if len(written) == 2 * 4 + 2:
            raise KeyboardInterrupt
        written.append(1)
        return encode(image)

    monkeypatch.setattr(layout_module, "png_bytes", cut_off)
    with pytest.raises(RunInterrupted, match="2 of 4 batches are complete.*--resume") as info:
        run(out, plan)
    assert info.value.exit_code == 130
    monkeypatch.setattr(layout_module, "png_bytes", encode)
    assert len(list((out / "images").rglob("*.png"))) == 10  # batch 2 half-written
    assert not (out / "manifest.jsonl").exists() and not (out / "run.json").exists()
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "images").rglob("0000[01]_*")}

    generated = []

    def counting(batch):
        generated.append(batch.index)
        return fake_generate(batch)

    with pytest.raises(InvkitError, match="--resume"):
        run(out, plan, generate=counting)  # neither --resume nor --overwrite
    summary = run(out, plan, generate=counting, resume=True,
                  info={"device": "cuda"})  # how it runs may differ
    assert summary["info"] == {"device": "cuda"}
    assert generated == [2, 3]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before} == before  # untouched
    assert summary["last_session"]["resumed"] and summary["last_session"]["batches"] == 2
    ignore = {"run.json", os.path.join("state", "run.json")}
    theirs = {k: v for k, v in files_with_bytes(reference).items() if k not in ignore
              and not k.startswith("state")}
    ours = {k: v for k, v in files_with_bytes(out).items() if k not in ignore
            and not k.startswith("state")}
    assert ours == theirs  # same files, same bytes as an uninterrupted run

    generated.clear()
    run(out, plan, generate=counting, resume=True)  # complete: nothing to redo
    assert generated == []


def test_resume_after_generate_raises(tmp_path):
    plan = plan_batches(num_classes=10, batch_size=2, num_batches=3)

    def flaky(batch):
        if batch.index == 1:
            raise RuntimeError("out of memory")
        return fake_generate(batch)

    with pytest.raises(RuntimeError, match="out of memory"):
        run(tmp_path, plan, generate=flaky)
    assert sorted(os.listdir(tmp_path / "state" / "batches")) == ["00000.json"]
    summary = run(tmp_path, plan, resume=True)
    assert summary["num_images"] == 6 and len(manifest(tmp_path)) == 6


def test_resume_refuses_a_different_configuration(tmp_path):
    plan = plan_batches(num_classes=10, batch_size=2, num_batches=2)
    with pytest.raises(RunInterrupted):
        run(tmp_path, plan, generate=lambda b: (_ for _ in ()).throw(KeyboardInterrupt))
    changed = {**CONFIG, "lr": 0.2, "priors": {"bn-stats": 0.05}}
    with pytest.raises(InvkitError) as info:
        run(tmp_path, plan, resume=True, config=changed)
    message = str(info.value)
    assert "\n" not in message
    assert "lr (0.1 -> 0.2)" in message and "priors.bn-stats (0.01 -> 0.05)" in message
    assert "seed" not in message
    other_plan = plan_batches(num_classes=10, batch_size=2, num_batches=3)
    with pytest.raises(InvkitError, match=r"num_batches \(2 -> 3\).*batch plan"):
        run(tmp_path, other_plan, resume=True)
    with pytest.raises(InvkitError, match=r"format \(png -> safetensors\)"):
        run(tmp_path, plan, resume=True, fmt="safetensors")
    run(tmp_path, plan, resume=True)


def test_resume_refuses_a_directory_without_state(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(b"")
    with pytest.raises(InvkitError, match="no invkit run state"):
        run(tmp_path, plan_batches(num_classes=10, batch_size=2), resume=True)


# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum, complete", [(signal.SIGINT, 2), (signal.SIGTERM, 1)])
def test_signal_stops_cleanly(tmp_path, signum, complete):
    """SIGINT finishes the current batch then stops; SIGTERM abandons it."""
    plan = plan_batches(num_classes=10, batch_size=2, num_batches=4)

    def signalled(batch):
        if batch.index == 1:
            os.kill(os.getpid(), signum)
        return fake_generate(batch)

    with pytest.raises(RunInterrupted, match=f"{complete} of 4 batches") as info:
        run(tmp_path, plan, generate=signalled)
    assert info.value.exit_code == 128 + signum
    done = sorted(os.listdir(tmp_path / "state" / "batches"))
    assert done == [f"{i:05d}.json" for i in range(complete)]
    run(tmp_path, plan, resume=True)
    assert len(manifest(tmp_path)) == 8


def test_resume_command_adds_resume():
    assert resume_command(["/venv/bin/invkit", "run", "deepinversion", "--overwrite",
                                   "--exp-name", "a b"]) == \
        "invkit run deepinversion --exp-name 'a b' --resume"


def test_resume_command_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert resume_command(["/x/invkit/__main__.py", "run", "deepinversion"]) == \
        "torchrun --nproc-per-node 2 -m invkit run deepinversion --resume"
    monkeypatch.setenv("WORLD_SIZE", "8")  # 2 nodes
    assert resume_command(["/venv/bin/invkit", "run"]) == \
        "torchrun <your torchrun options> /venv/bin/invkit run --resume"


# ----------------------------------------------------------------------------- safetensors


def test_safetensors_shards_hold_the_images_in_order(tmp_path):
    plan = plan_batches(num_classes=10, batch_size=4, num_batches=3, seed=1)
    summary = run(tmp_path, plan, fmt="safetensors", shard_size=5)
    expected = torch.cat([to_uint8(fake_generate(b).images01) for b in plan])
    targets = torch.tensor([t for b in plan for t in b.targets])
    shards = sorted(os.listdir(tmp_path / "shards"))
    assert shards == ["shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    loaded = [load_file(tmp_path / "shards" / name) for name in shards]
    assert [len(x["images"]) for x in loaded] == [5, 5, 2]
    assert torch.equal(torch.cat([x["images"] for x in loaded]), expected)
    assert torch.equal(torch.cat([x["targets"] for x in loaded]), targets)
    assert loaded[0]["images"].dtype == torch.uint8 and loaded[0]["targets"].dtype == torch.int64
    rows = manifest(tmp_path)
    assert [(r["file"], r["shard_index"]) for r in rows][4:7] == [
        ("shards/shard_00000.safetensors", 4), ("shards/shard_00001.safetensors", 0),
        ("shards/shard_00001.safetensors", 1)]
    assert not (tmp_path / "images").exists()
    assert not list((tmp_path / "state").rglob("*.safetensors"))  # per-batch copies removed
    assert (tmp_path / "grid.png").exists() and summary["num_shards"] == 3
    with safe_open(tmp_path / "shards" / shards[1], "pt") as handle:
        assert json.loads(handle.metadata()["invkit"])["first_image"] == 5


# ----------------------------------------------------------------------------- the real command


def test_deepinversion_command_resume_and_refusal(tmp_path):
    from click.testing import CliRunner

    from invkit.cli import make_cli
    from tests.test_torchrun import random_digits_weights

    weights = random_digits_weights(tmp_path / "digits.pt")
    out = tmp_path / "out"
    base = ["run", "deepinversion", "--teacher", "digits", "--weights", str(weights), "--bs", "2",
            "--iterations", "2", "--num-batches", "2", "--device", "cpu", "--quiet",
            "--output", str(out)]
    runner = CliRunner()
    first = runner.invoke(make_cli(), base)
    assert first.exit_code == 0, first.output
    assert len(manifest(out)) == 4
    again = runner.invoke(make_cli(), base)
    assert again.exit_code == 2 and "--resume" in again.output
    changed = runner.invoke(make_cli(), [*base, "--resume", "--lr", "0.05", "--seed", "3"])
    assert changed.exit_code == 2, changed.output
    assert "cannot resume" in changed.output and "lr (" in changed.output
    assert "seed (0 -> 3)" in changed.output
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    resumed = runner.invoke(make_cli(), [*base, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == before
