"""Knowledge distillation: the KD loss, augmentation, the training loop, saving, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from invkit.distill import DistillConfig, augment, distill, kd_loss, save_distilled
from invkit.errors import InvkitError
from tests.tiny_classifier import (
    TinyPlugin, random_uint8, tiny_teacher, write_imagefolder, write_shards,
)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_is_t_squared_kl(temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    p = torch.softmax(t / temperature, 1)
    kl = (p * (p.log() - torch.log_softmax(s / temperature, 1))).sum(1).mean()
    assert kd_loss(s, t, temperature).item() == pytest.approx(temperature ** 2 * kl.item(), rel=1e-5)
    assert kd_loss(t, t, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_augment_identity_flip_and_crop():
    x = torch.rand(16, 3, 6, 6)
    assert torch.equal(augment(x, padding=0, flip=False), x)
    flipped = augment(x, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    mirrored = [torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x)]
    assert all(m or torch.equal(f, i) for m, f, i in zip(mirrored, flipped, x))
    assert 0 < sum(mirrored) < 16  # some flipped, some not
    cropped = augment(x, padding=2, flip=False, generator=torch.Generator().manual_seed(1))
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    windows = [{(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(c, p[:, dy:dy + 6, dx:dx + 6])} for c, p in zip(cropped, padded)]
    assert all(windows)  # every output is a 6x6 window of its own padded image
    assert len({next(iter(w)) for w in windows}) > 1  # with different offsets


def _accuracy(network, test):
    images, targets = test
    with torch.no_grad():
        pred = network.module(network.normalize(images.float() / 255)).argmax(1)
    return (pred == targets).float().mean().item()


def _kd_loss_on(teacher, student, images):
    x = images.float() / 255
    with torch.no_grad():
        return kd_loss(student.module(student.normalize(x)), teacher.module(teacher.normalize(x)),
                       4.0).item()


def test_distill_trains_the_student_and_records_the_curve(tmp_path):
    teacher, student = tiny_teacher(0), tiny_teacher(1, arch="tiny-student")
    images, targets = random_uint8(96, seed=0)
    test = random_uint8(40, seed=1)
    before = _kd_loss_on(teacher, student, images)
    seen = []
    config = DistillConfig(epochs=3, batch_size=32, lr=0.01, optimizer="adam", flip=False, seed=0)
    result = distill(teacher, student, images, targets, config=config, test=test,
                     on_epoch=seen.append)

    assert [h["epoch"] for h in result.history] == [1, 2, 3] and seen == result.history
    assert all({"loss", "lr", "train_agree", "train_acc", "test_acc"} <= set(h) for h in result.history)
    assert result.history[-1]["lr"] < result.history[0]["lr"]  # cosine decay
    assert _kd_loss_on(teacher, student, images) < 0.8 * before
    test_images, test_targets = test
    with torch.no_grad():
        teacher_pred = teacher.module(teacher.normalize(test_images.float() / 255)).argmax(1)
    assert result.teacher_test_acc == (teacher_pred == test_targets).float().mean().item()
    assert result.history[-1]["test_acc"] == _accuracy(student, test)
    assert not student.module.training

    path = save_distilled(result, tmp_path / "out", teacher, extra={"data": ["x"]})
    record = json.loads((tmp_path / "out" / "distill.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3]
    assert record["final_test_acc"] == result.history[-1]["test_acc"]
    assert record["data"] == ["x"] and record["config"]["optimizer"] == "adam"
    assert path.exists()


def test_distill_is_deterministic_with_a_seed():
    images, targets = random_uint8(40, seed=2)
    runs = []
    for _ in range(2):
        student = tiny_teacher(1, arch="tiny-student")
        distill(tiny_teacher(0), student, images, targets,
                config=DistillConfig(epochs=1, batch_size=16, padding=1, flip=True, seed=3))
        runs.append(torch.cat([p.flatten() for p in student.module.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_bad_settings_are_user_errors():
    with pytest.raises(InvkitError, match="optimizer 'rmsprop'"):
        DistillConfig(optimizer="rmsprop")
    with pytest.raises(InvkitError, match="grad_clip=0"):
        DistillConfig(grad_clip=0)
    with pytest.raises(InvkitError, match="3 classes"):
        distill(tiny_teacher(0), tiny_teacher(1, num_classes=3), torch.zeros(2, 3, 8, 8))


def test_saved_student_loads_back_as_a_checkpoint(tmp_path, register_plugin):
    from invkit.teachers import load_teacher

    register_plugin(TinyPlugin(), "tiny-kd-plugin")
    teacher, student = tiny_teacher(0), tiny_teacher(1, arch="tiny-kd-student")
    images, targets = random_uint8(32, seed=4)
    result = distill(teacher, student, images, targets, config=DistillConfig(epochs=1))
    path = save_distilled(result, tmp_path, teacher)
    loaded = load_teacher(f"checkpoint:{path}")
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), student.module(x), atol=1e-6)
    assert loaded.meta.num_classes == 10 and loaded.meta.input_size == 8


def test_cli_distill_combines_dirs_and_saves(invoke, register_plugin, tmp_path):
    register_plugin(TinyPlugin(), "tiny-kd-plugin")
    write_imagefolder(tmp_path / "a", *random_uint8(20, seed=5))
    write_shards(tmp_path / "b", *random_uint8(12, seed=6), shard_size=8)
    write_imagefolder(tmp_path / "real", *random_uint8(10, seed=7))
    out = tmp_path / "student"
    args = ["distill", "--teacher", "tiny-kd", "--student", "tiny-kd-student",
            "--data", str(tmp_path / "a"), "--data", str(tmp_path / "b"),
            "--test-data", str(tmp_path / "real" / "images"), "--epochs", "2", "--bs", "16",
            "--output", str(out), "--quiet"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "distill.json").read_text())
    assert record["images"] == 32 and len(record["epochs"]) == 2
    assert "test_acc" in record["epochs"][-1]
    assert "checkpoint:" in result.output
    again = invoke(*args)  # refuses to overwrite without --overwrite
    assert again.exit_code == 2 and "--overwrite" in again.output


@pytest.mark.parametrize("args, message", [
    (["--teacher", "tiny-kd", "--student", "tiny-kd-student", "--data", "{tmp}/missing"],
     "does not exist"),
    (["--teacher", "no-such-net", "--student", "tiny-kd-student", "--data", "{tmp}/a"],
     "no-such-net"),
    (["--teacher", "tiny-kd", "--student", "tiny-kd-student", "--data", "{tmp}/a",
      "--optimizer", "adam", "--temperature", "0"], "temperature=0.0 must be positive"),
])
def test_cli_errors_are_one_line_exit_2(invoke, register_plugin, tmp_path, args, message):
    if "no-such-net" in args:
        register_plugin(TinyPlugin(), "tiny-kd-plugin")
    write_imagefolder(tmp_path / "a", *random_uint8(4, seed=8))
    result = invoke("distill", *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0
    assert message in result.output
