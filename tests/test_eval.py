"""invkit eval: a verifier's accuracy on a generated ImageFolder, per class, into eval.json."""

from __future__ import annotations

import json

import pytest
import torch

from invkit.evaluate import accuracy_report, evaluate_dir, per_class_table
from tests.tiny_classifier import TinyPlugin, random_uint8, tiny_teacher, write_imagefolder

NAMES = tuple(f"c{i}" for i in range(10))


def direct_predictions(teacher, images):
    with torch.no_grad():
        return teacher.module(teacher.normalize(images.float() / 255)).argmax(1)


def test_eval_dir_matches_a_direct_computation(tmp_path):
    teacher = tiny_teacher(0, class_names=NAMES)
    images, _ = random_uint8(60, seed=5)
    pred = direct_predictions(teacher, images)
    # Label two thirds with the network's own prediction, the rest one class off.
    targets = torch.where(torch.arange(60) % 3 == 0, (pred + 1) % 10, pred)
    write_imagefolder(tmp_path, images, targets)

    report = evaluate_dir(tmp_path, teacher)

    assert report["images"] == 60
    assert report["top1"] == pytest.approx(40 / 60)
    with torch.no_grad():
        logits = teacher.module(teacher.normalize(images.float() / 255))
    top5 = (logits.topk(5, dim=1).indices == targets[:, None]).any(1).float().mean().item()
    assert report["top5"] == pytest.approx(top5)
    for row in report["per_class"]:
        mask = targets == row["class"]
        assert row["count"] == int(mask.sum())
        assert row["correct"] == int((pred[mask] == row["class"]).sum())
        assert row["name"] == NAMES[row["class"]]
    written = json.loads((tmp_path / "eval.json").read_text())["tiny-kd"]
    assert written["top1"] == report["top1"] and written["verifier"] == "tiny-kd"
    assert len(written["per_class"]) == len(set(targets.tolist()))


def test_top5_only_with_more_than_five_classes():
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    report = accuracy_report(logits, torch.tensor([0, 0]))
    assert report["top1"] == 0.5 and "top5" not in report
    ten = torch.arange(10.0).repeat(2, 1)  # best class 9, then 8, 7, 6, 5
    report = accuracy_report(ten, torch.tensor([5, 4]))
    assert report["top1"] == 0.0 and report["top5"] == 0.5


def test_per_class_table_lists_every_class():
    report = accuracy_report(torch.eye(3), torch.tensor([0, 1, 1]), ["a", "b", "c"])
    table = per_class_table(report)
    assert table.row_count == 2
    assert [row["accuracy"] for row in report["per_class"]] == [1.0, 0.5]


def test_targets_outside_the_classifier_are_a_user_error():
    from invkit.errors import InvkitError

    with pytest.raises(InvkitError, match="class index 12 is outside"):
        accuracy_report(torch.zeros(1, 10), torch.tensor([12]))


def test_cli_missing_directory_is_one_line_exit_2(invoke, tmp_path):
    result = invoke("eval", str(tmp_path / "nope"), "--verifier-arch", "digits-verifier")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "Error:" in result.output and "does not exist" in result.output


def test_cli_unknown_verifier_is_one_line_exit_2(invoke, tmp_path):
    write_imagefolder(tmp_path, *random_uint8(3, seed=6))
    result = invoke("eval", str(tmp_path), "--verifier-arch", "no-such-net")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "no-such-net" in result.output


def test_cli_eval_prints_and_writes(invoke, register_plugin, tmp_path):
    register_plugin(TinyPlugin(), "tiny-kd-plugin")
    teacher = tiny_teacher(0)
    images, _ = random_uint8(20, seed=7)
    write_imagefolder(tmp_path, images, direct_predictions(teacher, images))
    result = invoke("eval", str(tmp_path), "--verifier-arch", "tiny-kd")
    assert result.exit_code == 0, result.output
    assert "top-1 100.00%" in result.output
    assert json.loads((tmp_path / "eval.json").read_text())["tiny-kd"]["top1"] == 1.0


def test_eval_json_keeps_one_result_per_verifier(invoke, register_plugin, tmp_path):
    register_plugin(TinyPlugin(), "tiny-kd-plugin")
    teacher = tiny_teacher(0)
    images, _ = random_uint8(20, seed=7)
    write_imagefolder(tmp_path, images, direct_predictions(teacher, images))
    # An eval.json from before results were keyed: kept, under its verifier's name.
    (tmp_path / "eval.json").write_text(json.dumps(
        {"verifier": "old-net", "top1": 0.5, "per_class": []}))
    for spec in ("tiny-kd", "tiny-kd-student", "tiny-kd"):
        result = invoke("eval", str(tmp_path), "--verifier-arch", spec, "-q", "--num-workers", "0")
        assert result.exit_code == 0, result.output
        assert f"recorded under '{spec}'" in result.output
    results = json.loads((tmp_path / "eval.json").read_text())
    assert list(results) == ["old-net", "tiny-kd", "tiny-kd-student"]
    assert results["tiny-kd"]["top1"] == 1.0 and results["old-net"]["top1"] == 0.5
    assert results["tiny-kd-student"]["verifier"] == "tiny-kd-student"
    assert not list(tmp_path.glob(".eval.json.*"))  # written atomically: no temporary left
