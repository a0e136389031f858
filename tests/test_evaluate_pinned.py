"""invkit.evaluate pinned exactly: logits, reports, eval.json records and the per-class table.

Reports are compared whole against hand-computed values, refusals by their full text and
the rich table through a golden file, so a changed key, bound or column fails a test.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from invkit.errors import InvkitError
from invkit.evaluate import (
    EVAL_FILE, accuracy_report, evaluate_dataset, evaluate_dir, evaluate_images, per_class_table,
    predict_dataset, predict_logits, read_eval_results, record_eval_result,
)
from tests.golden import assert_golden
from tests.tiny_classifier import tiny_teacher

NAMES = tuple(f"c{i}" for i in range(10))


def images_u8(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)


def direct_logits(teacher, images):
    with torch.no_grad():
        return teacher.module(teacher.prepare(images.float() / 255))


def test_predict_logits_batches_to_the_direct_logits():
    """Any batch size gives the whole-tensor logits; the network is put in eval mode."""
    teacher = tiny_teacher(0)
    images = images_u8(7, 1)
    teacher.module.train()
    logits = predict_logits(teacher, images, batch_size=3)
    assert not teacher.module.training
    assert logits.dtype == torch.float32 and logits.shape == (7, 10)
    assert torch.allclose(logits, direct_logits(teacher, images), atol=1e-6)
    assert torch.allclose(predict_logits(teacher, images.float() / 255), logits, atol=1e-6)
    assert torch.allclose(predict_logits(teacher, images, batch_size=1), logits, atol=1e-6)
    empty = predict_logits(teacher, images[:0])
    assert torch.equal(empty, torch.zeros(0, 10))


def test_predict_dataset_reads_in_order():
    teacher = tiny_teacher(0)
    images = images_u8(5, 2)
    targets = torch.tensor([3, 1, 4, 1, 5], dtype=torch.int32)
    logits, got = predict_dataset(teacher, torch.utils.data.TensorDataset(images, targets),
                                  batch_size=2)
    assert torch.allclose(logits, direct_logits(teacher, images), atol=1e-6)
    assert got.dtype == torch.int64 and got.tolist() == [3, 1, 4, 1, 5]
    batches = []
    real = teacher.module.forward

    def spy(x):
        batches.append(x.shape[0])
        return real(x)

    teacher.module.forward = spy
    predict_dataset(teacher, torch.utils.data.TensorDataset(images, targets), batch_size=2)
    assert batches == [2, 2, 1]
    logits, got = predict_dataset(teacher, torch.utils.data.TensorDataset(images[:0],
                                                                          targets[:0]))
    assert torch.equal(logits, torch.zeros(0, 10))
    assert torch.equal(got, torch.zeros(0, dtype=torch.int64))


def test_accuracy_report_is_exact():
    """Whole report: counts, top-1/top-k, and rows only for classes present, in order."""
    logits = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0],
                           [0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0],
                           [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
    targets = torch.tensor([1, 2, 3, 6])
    report = accuracy_report(logits, targets, {1: "one", 3: "three"})
    assert report == {
        "images": 4, "top1": 0.5, "top5": 0.75,
        "per_class": [
            {"class": 1, "name": "one", "count": 1, "correct": 1, "accuracy": 1.0},
            {"class": 2, "name": None, "count": 1, "correct": 1, "accuracy": 1.0},
            {"class": 3, "name": "three", "count": 1, "correct": 0, "accuracy": 0.0},
            {"class": 6, "name": None, "count": 1, "correct": 0, "accuracy": 0.0},
        ]}
    report = accuracy_report(logits, targets, list("abcdefg"), k=1)
    assert report["top1"] == 0.5 and "top5" not in report
    assert [r["name"] for r in report["per_class"]] == ["b", "c", "d", "g"]
    assert accuracy_report(logits, targets, k=6)["top6"] == 0.75
    assert "top7" not in accuracy_report(logits, targets, k=7)
    same = accuracy_report(torch.eye(3)[[0, 0, 1]], torch.tensor([0, 0, 0]), None)
    assert same["per_class"] == [{"class": 0, "name": None, "count": 3, "correct": 2,
                                  "accuracy": 2 / 3}]


def test_accuracy_report_refusals_are_exact():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError) as err:
        accuracy_report(logits, torch.tensor([0, 1, 2]))
    assert str(err.value) == "2 predictions for 3 targets"
    for bad, first in (([0, 3], 3), ([-1, 2], -1), ([4, -2], 4)):
        with pytest.raises(InvkitError) as err:
            accuracy_report(logits, torch.tensor(bad))
        assert str(err.value) == (f"class index {first} is outside the classifier's 3 classes "
                                  "(0..2)")
    assert accuracy_report(logits, torch.tensor([0, 2]))["images"] == 2


def test_evaluate_images_and_dataset_name_classes_from_the_verifier():
    teacher = tiny_teacher(0, class_names=NAMES)
    images = images_u8(6, 3)
    pred = direct_logits(teacher, images).argmax(1)
    targets = torch.where(torch.arange(6) < 4, pred, (pred + 1) % 10)
    expected = accuracy_report(direct_logits(teacher, images), targets, NAMES)
    expected["verifier"] = "tiny-kd"
    report = evaluate_images(teacher, images, targets, batch_size=4)
    assert report == expected and report["top1"] == pytest.approx(4 / 6)
    dataset = torch.utils.data.TensorDataset(images, targets)
    assert evaluate_dataset(teacher, dataset, batch_size=4) == expected
    own = {int(t): "mine" for t in targets}
    assert {r["name"] for r in evaluate_images(teacher, images, targets,
                                               class_names=own)["per_class"]} == {"mine"}
    assert {r["name"] for r in evaluate_dataset(teacher, dataset,
                                                class_names=own)["per_class"]} == {"mine"}
    assert "top5" not in evaluate_images(teacher, images, targets, k=10)
    assert "top9" in evaluate_dataset(teacher, dataset, k=9)


def write_folder(root, images, targets, names=None):
    from invkit.output import class_dirname, save_png

    for n, (image, target) in enumerate(zip(images, targets.tolist())):
        name = names[target] if names else None
        save_png(root / "images" / class_dirname(target, 10, name) / f"{n:03d}.png",
                 image.float() / 255)


def test_evaluate_dir_report_and_eval_json(tmp_path):
    """The whole report; eval.json keyed by key (else the name); write=False writes nothing."""
    teacher = tiny_teacher(0)
    images = images_u8(5, 4)
    pred = direct_logits(teacher, images).argmax(1)
    targets = torch.where(torch.arange(5) == 0, (pred + 1) % 10, pred)
    write_folder(tmp_path, images, targets, names=[f"n{i}" for i in range(10)])
    report = evaluate_dir(tmp_path, teacher, batch_size=2, k=3, write=False)
    expected = {"directory": str(tmp_path),
                **accuracy_report(direct_logits(teacher, images)[targets.argsort(stable=True)],
                                  targets.sort(stable=True).values,
                                  {i: f"n{i}" for i in range(10)}, k=3),
                "verifier": "tiny-kd"}
    assert report == expected
    assert list(report)[0] == "directory"
    assert not (tmp_path / EVAL_FILE).exists()
    evaluate_dir(str(tmp_path), teacher, key="spec:tiny")
    evaluate_dir(tmp_path, teacher)
    written = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert list(written) == ["spec:tiny", "tiny-kd"]
    assert written["tiny-kd"]["per_class"] == expected["per_class"]
    assert written["tiny-kd"]["top5"] == pytest.approx(
        accuracy_report(direct_logits(teacher, images), targets)["top5"])
    named = tiny_teacher(0, class_names=NAMES)
    rows = evaluate_dir(tmp_path, named, write=False)["per_class"]
    assert [r["name"] for r in rows] == [NAMES[r["class"]] for r in rows]


def test_read_eval_results_formats_and_refusals(tmp_path):
    assert read_eval_results(tmp_path) == {}
    path = tmp_path / "eval.json"
    path.write_text("{broken")
    with pytest.raises(InvkitError) as err:
        read_eval_results(tmp_path)
    assert str(err.value) == f"{str(path)!r} is not valid JSON; move it away to start afresh"
    path.write_text("[1]")
    with pytest.raises(InvkitError) as err:
        read_eval_results(str(tmp_path))
    assert str(err.value) == f"{str(path)!r} does not hold invkit evaluation results"
    old = {"top1": 0.5, "per_class": [], "verifier": "v1"}
    path.write_text(json.dumps(old))
    assert read_eval_results(tmp_path) == {"v1": old}
    path.write_text(json.dumps({"top1": 0.5, "per_class": []}))
    assert read_eval_results(tmp_path) == {"verifier": {"top1": 0.5, "per_class": []}}
    path.write_text(json.dumps({"top1": {"top1": 1}}))  # keyed: a verifier named top1
    assert read_eval_results(tmp_path) == {"top1": {"top1": 1}}
    path.write_text(json.dumps({"per_class": {"a": 1}}))
    assert read_eval_results(tmp_path) == {"per_class": {"a": 1}}
    written = record_eval_result(tmp_path, "new", {"top1": 1.0})
    assert written == path
    assert json.loads(path.read_text()) == {"per_class": {"a": 1}, "new": {"top1": 1.0}}
    record_eval_result(str(tmp_path), "new", {"top1": 0.0})
    assert json.loads(path.read_text())["new"] == {"top1": 0.0}


def render(table):
    out = io.StringIO()
    Console(file=out, width=80, color_system=None, force_terminal=False).print(table)
    return out.getvalue()


def test_per_class_table_golden():
    """Columns, justification, empty names and the one-decimal percentage, whole."""
    report = accuracy_report(torch.eye(12)[[0, 1, 1, 11, 2, 0]],
                             torch.tensor([0, 1, 11, 11, 2, 11]),
                             {0: "zero", 11: "eleven"})
    assert_golden("evaluate-per-class-table", render(per_class_table(report, title="tiny")))
    assert per_class_table(report).title is None


def test_num_workers_and_batch_size_reach_the_dataloader(tmp_path, monkeypatch):
    """evaluate_dir -> evaluate_dataset -> predict_dataset hand on workers and batch size."""
    seen = []
    real = torch.utils.data.DataLoader

    def spy(dataset, **kwargs):
        seen.append((kwargs["batch_size"], kwargs["num_workers"], kwargs["shuffle"]))
        return real(dataset, **{**kwargs, "num_workers": 0})

    monkeypatch.setattr(torch.utils.data, "DataLoader", spy)
    teacher = tiny_teacher(0)
    images = images_u8(3, 6)
    write_folder(tmp_path, images, torch.tensor([0, 1, 2]))
    evaluate_dir(tmp_path, teacher, batch_size=2, num_workers=3, write=False)
    evaluate_dir(tmp_path, teacher, write=False)
    dataset = torch.utils.data.TensorDataset(images, torch.tensor([0, 1, 2]))
    evaluate_dataset(teacher, dataset, num_workers=4, batch_size=5)
    predict_dataset(teacher, dataset)
    assert seen == [(2, 3, False), (256, 0, False), (5, 4, False), (256, 0, False)]
