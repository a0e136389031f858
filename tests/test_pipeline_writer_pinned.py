"""invkit.pipeline.layout and .writer pinned exactly: paths, records, shards, run.json, refusals.

Time and the session id are made deterministic, so the records, manifest and run.json a
run writes are compared whole (golden files); each refusal's full text is compared.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import invkit
import invkit.pipeline.writer as writer
from invkit.distributed import DistEnv
from invkit.errors import InvkitError
from invkit.output import to_uint8
from invkit.pipeline import layout as lay
from invkit.pipeline.layout import GeneratedBatch, Layout, grid_rows, pack_shard, write_batch
from invkit.pipeline.plan import Batch
from invkit.pipeline.signals import RunInterrupted, resume_command
from tests.golden import assert_golden

NAMES = ["zero", "one", "two", "three"]
PLAN = [Batch(0, (0, 1, 2), 11), Batch(1, (3, 0, 1), 12), Batch(2, (2, 3), 13)]


def images_for(batch, size=2):
    gen = torch.Generator().manual_seed(batch.seed)
    return torch.rand(len(batch.targets), 3, size, size, generator=gen)


def generate(batch):
    """Deterministic results: varied confidences, one wrong teacher prediction, mixed losses."""
    targets = torch.tensor(batch.targets)
    pred = targets.clone()
    pred[-1] = (pred[-1] + 1) % 4
    conf = torch.tensor([0.1234567, 0.5, 0.25, 1.0])[:len(targets)]
    verifier = None if batch.index == 0 else torch.where(torch.arange(len(targets)) == 0,
                                                         (targets + 2) % 4, targets)
    return GeneratedBatch(images_for(batch), targets, pred, conf, verifier,
                          losses={"total": float(batch.index) + 0.5, "main": 2,
                                  "flag": True, "note": "x"},
                          stats={"it_per_s": 4.0 * (batch.index + 1), "timings": {"a": 1}})


@pytest.fixture
def fixed(monkeypatch):
    """perf_counter ticks 0.25 s per call; the session id is fixed."""
    ticks = itertools.count()
    monkeypatch.setattr(writer, "time",
                        types.SimpleNamespace(perf_counter=lambda: 0.25 * next(ticks)))
    monkeypatch.setattr(writer, "uuid", types.SimpleNamespace(
        uuid4=lambda: types.SimpleNamespace(hex="0123456789abcdef0123")))


def run(out, plan=PLAN, **kwargs):
    options = dict(config={"lr": 0.5}, num_classes=4, class_names=NAMES)
    options.update(kwargs)
    return writer.generate_dataset(plan, generate, out, **options)


def pinned(summary):
    versions = summary.pop("versions")
    assert versions == lay._versions()
    return json.dumps(summary, indent=1) + "\n"


# ----------------------------------------------------------------------------- layout


def test_layout_paths_offsets_and_names(tmp_path):
    plan = [Batch(5, (1, 2), 0), Batch(2, (3, 0, 4), 1)]
    layout = Layout(tmp_path, plan, "safetensors", 2, 12, ("a", "b", "c"))
    assert layout.out == tmp_path and layout.fmt == "safetensors" and layout.shard_size == 2
    assert layout.num_classes == 12 and layout.class_names == ["a", "b", "c"]
    assert [b.index for b in layout.batches] == [2, 5]
    assert layout.offsets == {2: 0, 5: 3} and layout.total_images == 5
    assert layout.num_shards == 3
    assert Layout(tmp_path, plan, "safetensors", 5, 4, None).num_shards == 1
    assert Layout(tmp_path, plan, "safetensors", 4, 4, None).num_shards == 2
    assert Layout(tmp_path, plan, "png", 2, 4, None).num_shards == 0
    assert Layout(tmp_path, plan, "png", 2, 4, []).class_names is None
    assert layout.state == tmp_path / "state"
    assert layout.record(7) == tmp_path / "state" / "batches" / "00007.json"
    assert layout.pending(7) == tmp_path / "state" / "batches" / "00007.safetensors"
    assert layout.shard(3) == tmp_path / "shards" / "shard_00003.safetensors"
    assert [layout.class_name(t) for t in (-1, 0, 2, 3)] == [None, "a", "c", None]
    assert Layout(tmp_path, plan, "png", 2, 4, None).class_name(0) is None
    assert layout.image_file(plan[1], 2) == "images/004/00002_002.png"
    assert layout.image_file(plan[0], 1) == "images/002_c/00005_001.png"
    assert [layout.shard_place(plan[0], i) for i in (0, 1)] == [(1, 1), (2, 0)]
    assert layout.shard_place(plan[1], 1) == (0, 1)
    assert lay.FORMATS == ("png", "safetensors") and lay.STATE_DIR == "state"
    assert lay.GRID_MIN_IMAGES == 100


def test_generated_batch_defaults():
    batch = GeneratedBatch(1, 2, 3, 4)
    assert (batch.verifier_pred, batch.losses, batch.stats) == (None, {}, {})
    assert GeneratedBatch(1, 2, 3, 4).losses is not batch.losses


def test_write_batch_refusals_are_exact(tmp_path):
    layout = Layout(tmp_path, PLAN, "png", 8, 4, NAMES)
    batch = PLAN[0]
    good = generate(batch)

    def refusal(**change):
        fields = {**good.__dict__, **change}
        with pytest.raises(ValueError) as err:
            write_batch(layout, batch, GeneratedBatch(**fields), seconds=0.0, rank=0, session="s")
        return str(err.value)

    assert refusal(images01=torch.rand(3, 2, 2)) == (
        "generate() returned images shaped (3, 2, 2) for a batch of 3")
    assert refusal(images01=torch.rand(2, 3, 2, 2)) == (
        "generate() returned images shaped (2, 3, 2, 2) for a batch of 3")
    assert refusal(targets=torch.tensor([0, 2, 1])) == (
        "generate() returned targets [0, 2, 1] for batch 0 planned with [0, 1, 2]")
    assert not (tmp_path / "state").exists()


def test_write_batch_png_files_and_record(tmp_path):
    """PNG pixels, the record's every field, int64 targets from any dtype, rounding."""
    layout = Layout(tmp_path, PLAN, "png", 8, 4, NAMES)
    batch = PLAN[1]
    result = generate(batch)
    result = GeneratedBatch(result.images01, result.targets.to(torch.int32)[None],
                            result.teacher_pred, result.teacher_conf.double(),
                            result.verifier_pred, result.losses, result.stats)
    write_batch(layout, batch, result, seconds=1.234567, rank=3, session="abc")
    record = json.loads(layout.record(1).read_text())
    assert record == {
        "index": 1, "seed": 12, "targets": [3, 0, 1], "rank": 3, "session": "abc", "images": 3,
        "seconds": 1.2346, "teacher_accuracy": 2 / 3, "verifier_accuracy": 2 / 3,
        "losses": {"total": 1.5, "main": 2, "flag": True, "note": "x"},
        "stats": {"it_per_s": 8.0, "timings": {"a": 1}},
        "rows": [
            {"file": "images/003_three/00001_000.png", "target": 3, "class_name": "three",
             "teacher_pred": 3, "teacher_conf": 0.123457, "verifier_pred": 1, "seed": 12,
             "batch": 1, "index": 0},
            {"file": "images/000_zero/00001_001.png", "target": 0, "class_name": "zero",
             "teacher_pred": 0, "teacher_conf": 0.5, "verifier_pred": 0, "seed": 12,
             "batch": 1, "index": 1},
            {"file": "images/001_one/00001_002.png", "target": 1, "class_name": "one",
             "teacher_pred": 2, "teacher_conf": 0.25, "verifier_pred": 1, "seed": 12,
             "batch": 1, "index": 2}]}
    expected = to_uint8(images_for(batch))
    for i, row in enumerate(record["rows"]):
        with Image.open(tmp_path / row["file"]) as image:
            assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1), expected[i])
    assert not layout.pending(1).exists()


def test_write_batch_safetensors_rows_and_pending_file(tmp_path):
    layout = Layout(tmp_path, PLAN, "safetensors", 2, 4, None)
    batch = PLAN[1]
    result = generate(batch)
    result = GeneratedBatch(result.images01, result.targets.to(torch.int32), result.teacher_pred,
                            result.teacher_conf, result.verifier_pred)
    write_batch(layout, batch, result, seconds=0.5, rank=0, session="s")
    record = json.loads(layout.record(1).read_text())
    assert [(r["file"], r["shard_index"], r["class_name"]) for r in record["rows"]] == [
        ("shards/shard_00001.safetensors", 1, None), ("shards/shard_00002.safetensors", 0, None),
        ("shards/shard_00002.safetensors", 1, None)]
    pending = load_file(layout.pending(1))
    assert torch.equal(pending["images"], to_uint8(images_for(batch)))
    assert pending["targets"].dtype == torch.int64 and pending["targets"].tolist() == [3, 0, 1]
    assert not (tmp_path / "images").exists()
    first = PLAN[0]
    write_batch(layout, first, generate(first), seconds=0.5, rank=0, session="s")
    assert json.loads(layout.record(0).read_text())["verifier_accuracy"] is None


def test_pack_shard_slices_across_batches_and_is_written_once(tmp_path):
    layout = Layout(tmp_path, PLAN, "safetensors", 2, 4, NAMES)
    for batch in PLAN:
        write_batch(layout, batch, generate(batch), seconds=0.5, rank=0, session="s")
    everything = torch.cat([to_uint8(images_for(b)) for b in PLAN])
    for k in range(layout.num_shards):
        pack_shard(layout, k)
    assert layout.num_shards == 4
    for k in range(4):
        with safe_open(layout.shard(k), framework="pt") as handle:
            assert handle.metadata() == {"invkit": json.dumps(
                {"format": "invkit-shard-v1", "first_image": 2 * k, "num_classes": 4,
                 "class_names": NAMES})}
            assert torch.equal(handle.get_tensor("images"), everything[2 * k:2 * k + 2])
            assert handle.get_tensor("targets").tolist() == [
                [0, 1], [2, 3], [0, 1], [2, 3]][k]
    layout.shard(1).write_bytes(b"kept")
    pack_shard(layout, 1)
    assert layout.shard(1).read_bytes() == b"kept"


def test_grid_rows_and_grid_size():
    rows = [{"target": t, "n": n} for n, t in enumerate((2, 0, 2, 1, 0, 2))]
    assert [r["n"] for r in grid_rows(rows, 6)] == [1, 3, 0, 4, 2, 5]
    assert [r["n"] for r in grid_rows(rows, 4)] == [1, 3, 0, 4]
    assert grid_rows(rows, 0) == []

    def size(*lengths):
        plan = [Batch(i, (0,) * n, 0) for i, n in enumerate(lengths)]
        return lay._grid_size(Layout(None, plan, "png", 1, 1, None))

    assert size(3, 4) == 7
    assert size(4, 50, 50) == 100
    assert size(4, 50, 46) == 100
    assert size(120, 80) == 120
    assert size(60, 30) == 90


def test_mean_numbers_skips_bools_and_non_numbers():
    means = lay._mean_numbers([{"b": 1, "a": 2.0, "t": True, "s": "x"}, {"b": 4, "c": None},
                               {"a": 3}])
    assert means == {"a": 2.5, "b": 2.5}
    assert list(means) == ["a", "b"]
    assert lay._mean_numbers([]) == {}


def test_versions_are_the_installed_ones():
    import platform

    import torchvision

    assert lay._versions() == {"invkit": invkit.__version__, "torch": torch.__version__,
                               "torchvision": torchvision.__version__,
                               "python": platform.python_version()}


# ----------------------------------------------------------------------------- whole runs


def test_png_run_writes_exact_records_manifest_and_run_json(tmp_path, fixed, monkeypatch):
    """Golden: every record, the manifest and run.json (versions compared separately)."""
    out = tmp_path / "out"
    grids = []
    monkeypatch.setattr(lay, "save_grid", lambda path, images: grids.append((path, images)))
    summary = run(out, info={"device": "cpu", "path": Path("rel")})
    assert json.loads((out / "run.json").read_text()) == json.loads(json.dumps(summary))
    assert_golden("writer-png-run-json", pinned(summary))
    assert_golden("writer-png-manifest", (out / "manifest.jsonl").read_bytes().decode())
    records = "".join((out / "state" / "batches" / f"{i:05d}.json").read_text() for i in range(3))
    assert_golden("writer-png-records", records)
    everything = torch.cat([to_uint8(images_for(b)) for b in PLAN])
    # Class-balanced: each class's first image (here positions 0..3), then each one's second.
    [(path, images)] = grids
    assert path == out / "grid.png"
    assert torch.equal(images, everything)


def test_safetensors_run_and_resume_summary(tmp_path, fixed):
    """Shards, grid from shards, pending files removed; a resumed session counts only its own."""
    out = tmp_path / "out"

    def stop_at_two(batch):
        if batch.index == 2:
            raise KeyboardInterrupt
        return generate(batch)

    with pytest.raises(RunInterrupted) as err:
        writer.generate_dataset(PLAN, stop_at_two, out, config={"lr": 0.5}, num_classes=4,
                                class_names=NAMES, fmt="safetensors", shard_size=3)
    assert str(err.value) == (f"interrupted by SIGINT: 2 of 3 batches are complete in "
                              f"{str(out)!r}; to continue, run the same command with --resume: "
                              f"{resume_command()}")
    assert err.value.exit_code == 128 + signal.SIGINT
    record = json.loads((out / "state" / "batches" / "00000.json").read_text())
    record["session"] = "older"
    (out / "state" / "batches" / "00000.json").write_text(json.dumps(record))
    summary = run(out, fmt="safetensors", shard_size=3, resume=True)
    assert_golden("writer-safetensors-run-json", pinned(summary))
    assert sorted(p.name for p in (out / "state" / "batches").iterdir()) == [
        "00000.json", "00001.json", "00002.json"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    everything = torch.cat([to_uint8(images_for(b)) for b in PLAN])
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    layout = Layout(out, PLAN, "safetensors", 3, 4, NAMES)
    assert torch.equal(lay._grid_images(layout, rows), everything)
    assert torch.equal(lay._grid_images(layout, rows[3:5]), everything[3:5])
    again = run(out, fmt="safetensors", shard_size=3, resume=True)  # complete: finish only
    assert again["num_images"] == 8 and again["last_session"]["resumed"] is True


def test_summary_without_verifier_or_time(tmp_path):
    layout = Layout(tmp_path, PLAN[:1], "png", 8, 4, None)
    record = {"session": "s", "images": 3, "seconds": 0.5, "losses": {}, "stats": {},
              "rows": [{"teacher_pred": 0, "target": 0, "teacher_conf": 0.5,
                        "verifier_pred": None}] * 3}
    summary = lay._summary(layout, {}, [record], session="s", world_size=2, wall=0.0,
                           resumed=False)
    assert summary["verifier_accuracy"] is None and "shard_size" not in summary
    assert summary["last_session"] == {"world_size": 2, "resumed": False, "batches": 1,
                                       "images": 3, "wall_seconds": 0.0, "images_per_s": None}
    summary = lay._summary(layout, {}, [record], session="other", world_size=1, wall=2.0,
                           resumed=True)
    assert summary["last_session"] == {"world_size": 1, "resumed": True, "batches": 0,
                                       "images": 0, "wall_seconds": 2.0, "images_per_s": None}
    summary = lay._summary(layout, {}, [record], session="s", world_size=1, wall=0.0004,
                           resumed=True)
    assert summary["last_session"]["images_per_s"] == 7500.0
    assert summary["last_session"]["wall_seconds"] == 0.0


# ----------------------------------------------------------------------------- writer


def test_generate_dataset_refusals_are_exact(tmp_path):
    def refusal(plan=PLAN, error=InvkitError, **kwargs):
        with pytest.raises(error) as err:
            run(tmp_path / "out", plan, **kwargs)
        return str(err.value)

    assert refusal(fmt="jpg") == "unknown format 'jpg' (valid: png, safetensors)"
    assert refusal(fmt="safetensors", shard_size=0) == "shard size must be at least 1, got 0"
    assert refusal(plan=[]) == "the batch plan is empty: nothing to generate"
    assert refusal(plan=[PLAN[0], PLAN[0]], error=ValueError) == "batch indices must be unique"
    assert not (tmp_path / "out").exists()
    assert run(tmp_path / "one", fmt="safetensors", shard_size=1)["num_shards"] == 8


def test_a_refused_start_releases_the_lock(tmp_path):
    run(tmp_path)
    with pytest.raises(InvkitError) as err:
        run(tmp_path)
    assert "--resume" in str(err.value)
    run(tmp_path, overwrite=True)  # the refused run left no lock behind


def test_non_finite_batches_are_refused_exactly():
    batch = Batch(4, (0,), 0)

    def refusal(images, **losses):
        with pytest.raises(InvkitError) as err:
            writer._check_finite(batch, GeneratedBatch(images, None, None, None, losses=losses))
        return str(err.value)

    tail = ("the batch was not saved (completed batches are kept and --resume continues). "
            "Lower the learning rate or the prior weights.")
    ok = torch.zeros(1, 3, 2, 2)
    assert refusal(ok, b=math.nan, a=-math.inf, c=1.0) == (
        f"batch 5: the loss a, b became non-finite; {tail}")
    assert refusal(ok, total=math.inf) == f"batch 5: the loss total became non-finite; {tail}"
    assert refusal(torch.tensor([[0.5, math.nan]])) == f"batch 5: the images are not finite; {tail}"
    writer._check_finite(batch, GeneratedBatch(ok, None, None, None, losses={"a": 1.0, "n": 3}))
    writer._check_finite(batch, GeneratedBatch(torch.zeros(2, dtype=torch.uint8), None, None,
                                               None, losses={"s": "nan"}))


def test_progress_hooks_are_optional():
    calls = []
    writer._call(None, "batch_done", 1, 2)
    writer._call(types.SimpleNamespace(), "batch_done", 1, 2)
    writer._call(types.SimpleNamespace(batch_done=lambda *a: calls.append(a)), "batch_done", 1, 2)
    assert calls == [(1, 2)]


def test_count_done_reads_other_ranks_records(tmp_path):
    layout = Layout(tmp_path, PLAN, "png", 8, 4, None)
    (tmp_path / "state" / "batches").mkdir(parents=True)
    for name in ("00000.json", "00001.json", "00003.safetensors", "x.json.tmp"):
        (tmp_path / "state" / "batches" / name).write_text("{}")
    assert writer._count_done(layout, {7, 8}, 3, DistEnv(0, 1, 0)) == 5
    assert writer._count_done(layout, {7, 8}, 3, DistEnv(0, 2, 0)) == 2


def test_progress_counts_on_resume(tmp_path, fixed):
    calls = []

    class Recorder:
        def batch_start(self, batch, done, total):
            calls.append(("start", batch.index, done, total))

        def batch_done(self, done, total):
            calls.append(("done", done, total))

    def stop_at_one(batch):
        if batch.index == 1:
            raise KeyboardInterrupt
        return generate(batch)

    with pytest.raises(RunInterrupted):
        writer.generate_dataset(PLAN, stop_at_one, tmp_path, config={}, num_classes=4,
                                class_names=None)
    run(tmp_path, config={}, class_names=None, resume=True, progress=Recorder())
    assert calls == [("done", 1, 3), ("start", 1, 1, 3), ("done", 2, 3), ("start", 2, 2, 3),
                     ("done", 3, 3)]


def test_sigterm_abandons_after_the_current_batch(tmp_path):
    def signalled(batch):
        if batch.index == 0:
            signal.raise_signal(signal.SIGTERM)
        return generate(batch)

    with pytest.raises(RunInterrupted) as err:
        writer.generate_dataset(PLAN, signalled, tmp_path, config={}, num_classes=4,
                                class_names=None)
    assert str(err.value).startswith("interrupted by SIGTERM: 0 of 3 batches are complete in ")
    assert err.value.exit_code == 128 + signal.SIGTERM


def test_a_second_rank_writes_its_share_only(tmp_path, monkeypatch):
    """Rank 1 of 2: no lock, no progress calls, batches remaining[1::2], shards 1 and 3."""
    told = iter([{"done": [0], "session": "rank0sess"}, {"from": "rank 0"}])
    sent = []

    def broadcast(obj):
        sent.append(obj)
        return next(told)

    monkeypatch.setattr(writer, "init_distributed", lambda: DistEnv(1, 2, 1))
    monkeypatch.setattr(writer, "broadcast_object", broadcast)
    monkeypatch.setattr(writer, "barrier", lambda: None)
    made = []
    plan = PLAN + [Batch(3, (1,), 14), Batch(4, (2,), 15)]
    other = Layout(tmp_path, plan, "safetensors", 2, 4, None)
    for batch in (plan[0], plan[1], plan[3]):  # what rank 0 wrote
        write_batch(other, batch, generate(batch), seconds=0.0, rank=0, session="x")

    def tracked(batch):
        made.append(batch.index)
        return generate(batch)

    progress = types.SimpleNamespace(batch_start=lambda *a: made.append(("start", a)),
                                     batch_done=lambda *a: made.append(("done", a)))
    summary = writer.generate_dataset(plan, tracked, tmp_path, config={}, num_classes=4,
                                      class_names=None, fmt="safetensors", shard_size=2,
                                      progress=progress)
    assert summary == {"from": "rank 0"} and sent == [None, None]
    assert made == [2, 4]
    for index in (2, 4):
        record = json.loads((tmp_path / "state" / "batches" / f"{index:05d}.json").read_text())
        assert (record["rank"], record["session"]) == (1, "rank0sess")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "state"]  # no lock
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "shard_00001.safetensors", "shard_00003.safetensors"]
