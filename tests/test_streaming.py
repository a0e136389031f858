"""distill and eval stream their data through GeneratedImages; results are unchanged.

The figures pinned here were measured with the code that decoded everything into
one tensor, before streaming was added.
"""

from __future__ import annotations

import json

import pytest
import torch

from invkit.data import GeneratedImages, load_image_dataset
from invkit.distill import DistillConfig, distill
from invkit.evaluate import evaluate_dir
from tests.tiny_classifier import (
    TinyPlugin, random_uint8, tiny_teacher, write_imagefolder, write_shards,
)

PINNED_EPOCHS = [(0.036858778446912766, 0.0, 0.125, 0.0), (0.03388233482837677, 0.0, 0.125, 0.0)]


@pytest.fixture
def dirs(tmp_path):
    write_imagefolder(tmp_path / "a", *random_uint8(20, seed=5), names={3: "cat"})
    write_shards(tmp_path / "b", *random_uint8(12, seed=6), shard_size=8)
    write_imagefolder(tmp_path / "real", *random_uint8(10, seed=7))
    return tmp_path


def test_cli_distill_gives_the_pinned_curve(invoke, register_plugin, dirs):
    register_plugin(TinyPlugin(), "tiny-kd-plugin")
    result = invoke("distill", "--teacher", "tiny-kd", "--student", "tiny-kd-student",
                    "--data", str(dirs / "a"), "--data", str(dirs / "b"),
                    "--test-data", str(dirs / "real" / "images"), "--epochs", "2", "--bs", "16",
                    "--output", str(dirs / "s"), "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads((dirs / "s" / "distill.json").read_text())
    got = [(e["loss"], e["train_agree"], e["train_acc"], e["test_acc"]) for e in record["epochs"]]
    assert got == [pytest.approx(p, rel=1e-6) for p in PINNED_EPOCHS]
    assert record["teacher_test_acc"] == 0.0 and record["images"] == 32


@pytest.mark.parametrize("name, top1, top5, rows", [
    ("a", 0.0, 0.6499999761581421,
     [(0, None, 1, 0), (2, None, 1, 0), (3, "cat", 3, 0), (4, None, 4, 0), (5, None, 4, 0),
      (6, None, 3, 0), (7, None, 2, 0), (9, None, 2, 0)]),
    ("b", 0.1666666716337204, 0.3333333432674408,
     [(0, None, 2, 0), (1, None, 2, 2), (2, None, 1, 0), (3, None, 1, 0), (5, None, 1, 0),
      (6, None, 3, 0), (9, None, 2, 0)]),
])
def test_eval_gives_the_pinned_report(dirs, name, top1, top5, rows):
    report = evaluate_dir(dirs / name, tiny_teacher(0, arch="tiny-kd"), write=False)
    assert report["top1"] == pytest.approx(top1) and report["top5"] == pytest.approx(top5)
    assert [(r["class"], r["name"], r["count"], r["correct"]) for r in report["per_class"]] == rows


@pytest.mark.parametrize("workers", [0, 2])
def test_distill_on_a_dataset_equals_distill_on_tensors(dirs, workers):
    paths = [dirs / "a", dirs / "b"]
    test = GeneratedImages(dirs / "real")
    config = DistillConfig(epochs=2, batch_size=16, lr=0.01, optimizer="adam", padding=1,
                           flip=True, seed=3, num_workers=workers)
    runs = []
    for data in (load_image_dataset(paths), (GeneratedImages(paths),)):
        student = tiny_teacher(1, arch="tiny-student")
        result = distill(tiny_teacher(0), student, *data, config=config, test=test)
        runs.append((result.history, torch.cat([p.flatten() for p in student.module.parameters()])))
    (tensor_history, tensor_weights), (stream_history, stream_weights) = runs
    assert torch.equal(tensor_weights, stream_weights)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in tensor_history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in stream_history] == strip
