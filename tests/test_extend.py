"""Data-free continual learning: head finding and widening, the extend loss and loop,
saving and reloading extended networks, and the `invkit extend` command's errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from invkit.distill import DistillConfig, kd_loss
from invkit.errors import InvkitError
from invkit.extend import (
    ExtendConfig, NewClasses, extend, load_extend_test, load_new_classes, load_replay,
    align_new_rows, old_share_kd, save_extended, widen,
)
from invkit.output import save_png
from invkit.teachers import load_teacher, save_teacher
from invkit.teachers.heads import find_head, resize_head, widen_linear
from tests.tiny_classifier import SIZE, TinyPlugin, tiny_teacher

OLD_NAMES = tuple("abcdefghij")  # the tiny teacher's 10 classes


def names_teacher(seed: int = 0) -> object:
    return tiny_teacher(seed, arch="tiny-kd", class_names=OLD_NAMES)


def write_folder(root: Path, classes: dict[str, int], seed: int = 0, size: int = SIZE) -> Path:
    """``classes`` = {folder name: image count}; random 8x8 PNGs."""
    g = torch.Generator().manual_seed(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            save_png(root / name / f"{i:03d}.png", torch.rand(3, size, size, generator=g))
    return root


def quick(epochs: int = 1, batch_size: int = 8, **kwargs) -> ExtendConfig:
    training = DistillConfig(epochs=epochs, batch_size=batch_size, lr=0.01, flip=False,
                             padding=0, temperature=2.0)
    return ExtendConfig(training=training, **kwargs)


# --------------------------------------------------------------------------- heads


def test_find_head_last_linear_named_and_errors():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    assert find_head(net, 3)[0] == "3"
    assert find_head(net, name="1")[1] is net[1]
    with pytest.raises(InvkitError, match="layer '3' has 3 outputs but the network has 5"):
        find_head(net, 5)
    with pytest.raises(InvkitError, match="no layer named 'fc'"):
        find_head(net, name="fc")
    with pytest.raises(InvkitError, match="'2' is a ReLU, not an nn.Linear"):
        find_head(net, name="2")
    with pytest.raises(InvkitError, match="no nn.Linear layer"):
        find_head(nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()))


def test_widen_linear_keeps_old_rows_and_resize_head():
    torch.manual_seed(0)
    old = nn.Linear(4, 3)
    wide = widen_linear(old, 5)
    assert wide.weight.shape == (5, 4) and wide.bias.shape == (5,)
    assert torch.equal(wide.weight[:3], old.weight) and torch.equal(wide.bias[:3], old.bias)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    assert resize_head(net, 7) == "1" and net[1].out_features == 7


def test_widen_keeps_old_logits_and_records_names():
    teacher = names_teacher()
    wide = widen(teacher, ["k", "l"])
    x = torch.rand(6, 3, SIZE, SIZE)
    with torch.no_grad():
        old_logits = teacher.module(teacher.prepare(x))
        new_logits = wide.module(wide.prepare(x))
    assert new_logits.shape == (6, 12)
    # Equal up to float rounding (a wider matrix product may sum in another order).
    assert torch.allclose(new_logits[:, :10], old_logits, rtol=0, atol=1e-6)
    assert wide.meta.num_classes == 12 and wide.meta.class_names == OLD_NAMES + ("k", "l")
    assert wide.module is not teacher.module and teacher.module[-1].out_features == 10


# ---------------------------------------------------------------------------- loss


def _new_classes(n: int = 12, seed: int = 1) -> NewClasses:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return NewClasses(images=images, targets=torch.arange(n) % 2, names=("k", "l"))


def test_old_share_kd_penalises_new_class_mass():
    teacher_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    on_old = torch.cat([teacher_logits, torch.full((2, 1), -1e4)], 1)  # no new-class mass
    assert old_share_kd(on_old, teacher_logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    # Equal new-class logit: p_new[O] = p_old * 1/(1 + e^{z/T} / sum), KL = -log(that share).
    z = torch.tensor([[2.0, 0.0, 2.0]])
    share = (torch.exp(torch.tensor([1.0, 0.0])).sum() / torch.exp(z / 2).sum()).item()
    assert old_share_kd(z, teacher_logits[:1], 2.0).item() == pytest.approx(
        -4 * math.log(share), rel=1e-5)
    assert kd_loss(z[:, :2], teacher_logits[:1], 2.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("mode", ["finetune", "lwf", "replay", "replay-old-softmax",
                                  "replay-ce-local", "replay-head-ce"])
def test_first_epoch_loss_is_the_documented_sum(mode):
    """One step over every image: the recorded loss is the loss at the initial weights."""
    teacher = names_teacher()
    new = _new_classes()
    replaying = mode.startswith("replay")
    replay = torch.randint(0, 256, (5, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(2),
                           dtype=torch.uint8) if replaying else None
    config = quick(batch_size=64, distill=mode != "finetune", lwf_weight=0.5, replay_weight=2.0,
                   ce_weight=1.5, replay_softmax="old" if mode.endswith("softmax") else "all",
                   replay_ce_weight=0.7 if mode.endswith("local") else 0.0,
                   new_ce="new" if mode.endswith("local") else "all",
                   head_ce_weight=0.3 if mode.endswith("head-ce") else 0.0)
    torch.manual_seed(3)
    result = extend(teacher, new, replay, config=config)
    torch.manual_seed(3)
    net = widen(teacher, new.names)  # the same initial network
    x = new.images.float() / 255
    if replay is not None:
        x = torch.cat([x, replay.float() / 255])
    net.module.train()  # BatchNorm uses batch statistics (order-invariant), as in training
    with torch.no_grad():
        logits = net.module(net.prepare(x))
        old = teacher.module(teacher.prepare(x))
    b = new.images.shape[0]
    ce = (F.cross_entropy(logits[:b, 10:], new.targets) if mode.endswith("local")
          else F.cross_entropy(logits[:b], new.targets + 10))
    expected = {"ce": ce.item()}
    loss = 1.5 * ce
    if mode != "finetune":
        lwf = kd_loss(logits[:b, :10], old[:b], 2.0)
        expected["lwf_kd"] = lwf.item()
        loss = loss + 0.5 * lwf
    if replaying:
        rep = (kd_loss(logits[b:, :10], old[b:], 2.0) if mode.endswith("softmax")
               else old_share_kd(logits[b:], old[b:], 2.0))
        expected["replay_kd"] = rep.item()
        loss = loss + 2.0 * rep
    if mode.endswith("local"):
        replay_ce = F.cross_entropy(logits[b:], old[b:].argmax(1))
        expected["replay_ce"] = replay_ce.item()
        loss = loss + 0.7 * replay_ce
    if mode.endswith("head-ce"):
        # The head on the (detached) features gives the same values as the logits.
        head_ce = F.cross_entropy(logits, torch.cat([new.targets + 10, old[b:].argmax(1)]))
        expected["head_ce"] = head_ce.item()
        loss = loss + 0.3 * head_ce
    record = result.history[0]
    assert result.mode == mode.split("-")[0]
    assert set(expected) | {"loss"} == set(record) & {"loss", "ce", "lwf_kd", "replay_kd",
                                                       "replay_ce", "head_ce"}
    for key, value in {**expected, "loss": loss.item()}.items():
        assert record[key] == pytest.approx(value, rel=1e-4), key


def test_extend_trains_reports_splits_and_leaves_the_teacher_alone():
    teacher = names_teacher()
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    new = _new_classes(16)
    test_images = torch.randint(0, 256, (8, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(4),
                                dtype=torch.uint8)
    test_targets = torch.tensor([0, 1, 2, 3, 10, 11, 10, 11])
    seen = []
    result = extend(teacher, new, new.images[:6], config=quick(epochs=2),
                    test=(test_images, test_targets), on_epoch=seen.append)
    assert [h["epoch"] for h in result.history] == [1, 2] and seen == result.history
    for record in result.history:
        hits = [record[k] * n for k, n in (("test_acc_old", 4), ("test_acc_new", 4))]
        assert all(abs(h - round(h)) < 1e-9 for h in hits)  # counts out of 4 images each
        assert record["test_acc"] == pytest.approx(sum(hits) / 8)
    assert result.history[1]["lr"] < result.history[0]["lr"]
    assert 0 <= result.teacher_test_acc_old <= 1
    assert all(torch.equal(before[k], v) for k, v in teacher.module.state_dict().items())
    assert not result.network.module.training


def test_frozen_backbone_trains_the_head_only():
    teacher = names_teacher()
    result = extend(teacher, _new_classes(), None, config=quick(backbone_lr_scale=0.0))
    before, after = teacher.module.state_dict(), result.network.module.state_dict()
    changed = {k for k in before if not k.startswith("7.") and not torch.equal(before[k], after[k])}
    assert changed == set()  # convolutions and BatchNorm statistics (running means) kept
    assert not torch.equal(after["7.weight"][:10], before["7.weight"])  # the head trained


def test_head_ce_trains_only_the_head():
    """With every other weight 0 the head-only cross-entropy leaves the rest unchanged."""
    teacher = names_teacher()
    g = torch.Generator().manual_seed(2)
    replay = torch.randint(0, 256, (6, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    config = quick(ce_weight=0.0, lwf_weight=0.0, replay_weight=0.0, head_ce_weight=1.0)
    # No weight decay: it would move every weight, gradient or not.
    config = dataclasses.replace(config, training=dataclasses.replace(config.training,
                                                                      weight_decay=0.0))
    torch.manual_seed(0)
    result = extend(teacher, _new_classes(), replay, config=config)
    torch.manual_seed(0)
    start = widen(teacher, ("k", "l"))
    name, _ = find_head(start.module, 12)
    after = dict(result.network.module.named_parameters())
    for key, value in start.module.named_parameters():
        assert torch.equal(after[key], value) == (not key.startswith(name + ".")), key
    assert result.history[0]["head_ce"] > 0
    with pytest.raises(InvkitError, match="head_ce_weight .* needs distillation"):
        quick(distill=False, head_ce_weight=1.0)


def test_align_new_rows_equalises_the_mean_norms_exactly():
    teacher = names_teacher()
    net = widen(teacher, ("k", "l"))
    _, layer = find_head(net.module, 12)
    with torch.no_grad():
        layer.weight[10] = torch.tensor([3.0, 4.0] + [0.0] * (layer.in_features - 2))  # norm 5
        layer.weight[11] = torch.tensor([0.0] * (layer.in_features - 1) + [1.0])       # norm 1
        layer.bias[10:] = torch.tensor([0.5, -1.0])
    old_w, old_b = layer.weight[:10].clone(), layer.bias[:10].clone()
    x = torch.rand(4, 3, SIZE, SIZE)
    with torch.no_grad():
        before = net.module(net.prepare(x))
    old_norm = old_w.norm(dim=1).mean().item()
    info = align_new_rows(net, 10)
    assert info["new_norm"] == pytest.approx(3.0) and info["old_norm"] == pytest.approx(old_norm)
    assert info["gamma"] == pytest.approx(old_norm / 3.0)
    norms = layer.weight.norm(dim=1)
    assert norms[10:].mean().item() == pytest.approx(norms[:10].mean().item(), rel=1e-6)
    assert norms[10].item() == pytest.approx(5 * info["gamma"], rel=1e-6)
    assert torch.equal(layer.weight[:10], old_w) and torch.equal(layer.bias[:10], old_b)
    assert layer.bias[10:].tolist() == pytest.approx([0.5 * info["gamma"], -info["gamma"]])
    with torch.no_grad():
        after = net.module(net.prepare(x))
    assert torch.equal(after[:, :10], before[:, :10])     # old logits untouched
    assert torch.allclose(after[:, 10:], info["gamma"] * before[:, 10:], rtol=1e-5, atol=1e-5)
    with pytest.raises(InvkitError, match="cannot align the head: 12 old classes of 12"):
        align_new_rows(net, 12)


def test_extend_align_head_records_gamma_and_aligned_accuracy():
    teacher = names_teacher()
    new = _new_classes(16)
    test = (torch.rand(12, 3, SIZE, SIZE), torch.arange(12))
    torch.manual_seed(0)
    plain = extend(teacher, new, None, config=quick(), test=test)
    torch.manual_seed(0)
    aligned = extend(teacher, new, None, config=quick(align_head=True), test=test)
    assert plain.alignment is None and plain.summary()["alignment"] is None
    info = aligned.summary()["alignment"]
    assert set(info) == {"gamma", "old_norm", "new_norm", "before"}
    # Same training (same seeds), then alignment: "before" is the unaligned network's.
    assert info["before"] == {k: plain.final[k] for k in ("test_acc", "test_acc_old",
                                                          "test_acc_new")}
    _, a = find_head(aligned.network.module, 12)
    _, p = find_head(plain.network.module, 12)
    assert torch.equal(a.weight[:10], p.weight[:10])
    assert torch.allclose(a.weight[10:], info["gamma"] * p.weight[10:])
    assert aligned.summary()["config"]["align_head"] is True


def test_fine_tuning_with_replay_is_refused():
    with pytest.raises(InvkitError, match="plain fine-tuning"):
        extend(names_teacher(), _new_classes(), torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8),
               config=quick(distill=False))


# ------------------------------------------------------------------- saving, reloading


def test_saved_network_reloads_with_the_same_logits_and_extends_again(tmp_path, register_plugin):
    register_plugin(TinyPlugin(), "tiny-kd-plugin")
    teacher = names_teacher()
    result = extend(teacher, _new_classes(), None, config=quick())
    path = save_extended(result, tmp_path / "out", teacher, extra={"new_data": "x"})
    loaded = load_teacher(f"checkpoint:{path}")
    assert loaded.meta.num_classes == 12 and loaded.meta.class_names == OLD_NAMES + ("k", "l")
    x = torch.rand(5, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded.module(loaded.prepare(x)),
                           result.network.module(result.network.prepare(x)))
    record = json.loads((tmp_path / "out" / "extend.json").read_text())
    assert record["old_classes"] == list(OLD_NAMES) and record["new_classes"] == ["k", "l"]
    assert record["mode"] == "lwf" and record["new_data"] == "x"
    # ... and it is a teacher like any other: extend it again.
    again = extend(loaded, NewClasses(_new_classes().images, torch.zeros(12, dtype=torch.int64),
                                      ("m",)), None, config=quick())
    assert again.network.meta.class_names[-3:] == ("k", "l", "m")


def test_digits_network_of_another_width_loads_from_its_file(tmp_path):
    digits = load_teacher("digits")
    resize_head(digits.module, 5)
    five = dataclasses.replace(digits, meta=dataclasses.replace(
        digits.meta, num_classes=5, class_names=tuple("01234")))
    path = save_teacher(five, tmp_path / "d5.safetensors")
    loaded = load_teacher(f"checkpoint:{path}")
    assert loaded.meta.num_classes == 5 and loaded.module.fc.out_features == 5
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(loaded.prepare(x)), five.module(five.prepare(x)))


# ----------------------------------------------------------------------- data loading


def test_new_classes_replay_and_test_are_matched_by_name(tmp_path):
    teacher = names_teacher()
    new = load_new_classes(write_folder(tmp_path / "new", {"k": 3, "l": 2}), teacher)
    assert new.names == ("k", "l") and new.targets.tolist() == [0, 0, 0, 1, 1]
    replay = write_folder(tmp_path / "replay" / "images", {"000_a": 2, "003_d": 1})
    assert load_replay([tmp_path / "replay"], teacher).shape == (3, 3, SIZE, SIZE)
    test_dir = write_folder(tmp_path / "test", {"l": 1, "b": 2, "k": 1})  # sorted: b, k, l
    images, targets = load_extend_test(test_dir, OLD_NAMES + ("k", "l"))
    assert targets.tolist() == [1, 1, 10, 11] and images.shape[0] == 4
    assert replay.exists()


@pytest.mark.parametrize("classes,size,message", [
    ({"k": 2, "c": 1}, SIZE, "new class 'c' .* is already one of teacher"),
    ({"k": 2, "l": 0}, SIZE, "class folder .*l' of the new data holds no images"),
    ({"k": 2}, 16, "holds 16x16 images but teacher 'tiny-kd' takes 8x8"),
])
def test_bad_new_data_is_refused(tmp_path, classes, size, message):
    root = write_folder(tmp_path / "new", classes, size=size)
    with pytest.raises(InvkitError, match=message):
        load_new_classes(root, names_teacher())


@pytest.mark.parametrize("folders,message", [
    ({"012_m": 1}, "has class 12 .* teacher 'tiny-kd' has 10 classes"),
    ({"001_zebra": 1}, "'001_zebra' .* is not teacher 'tiny-kd''s class 1 \\('b'\\)"),
])
def test_replay_of_another_network_is_refused(tmp_path, folders, message):
    write_folder(tmp_path / "replay", folders)
    with pytest.raises(InvkitError, match=message):
        load_replay([tmp_path / "replay"], names_teacher())


# ------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_setup(tmp_path, register_plugin):
    register_plugin(TinyPlugin(), "tiny-kd-plugin")
    teacher = save_teacher(names_teacher(), tmp_path / "teacher.safetensors")
    write_folder(tmp_path / "new", {"k": 6, "l": 6})
    write_folder(tmp_path / "replay" / "images", {"000_a": 3, "001_b": 3})
    write_folder(tmp_path / "test", {"a": 2, "k": 2, "l": 2}, seed=5)
    return tmp_path, f"checkpoint:{teacher}"


def _args(tmp_path, teacher, *extra):
    return ["extend", "--teacher", teacher, "--new-data", str(tmp_path / "new"),
            "--epochs", "2", "--bs", "4", "--test-data", str(tmp_path / "test"),
            "-o", str(tmp_path / "out"), "-q", *extra]


def test_cli_extend_writes_the_network_and_report(invoke, cli_setup):
    tmp_path, teacher = cli_setup
    result = invoke(*_args(tmp_path, teacher, "--replay", str(tmp_path / "replay"),
                           "--lwf-weight", "0.5"))
    assert result.exit_code == 0, result.output
    assert "test accuracy all" in result.output and "epoch 2/2: all" in result.output
    record = json.loads((tmp_path / "out" / "extend.json").read_text())
    assert record["mode"] == "replay" and record["replay_images"] == 6
    assert record["config"]["lwf_weight"] == 0.5 and len(record["epochs"]) == 2
    assert set(record["final"]) == {"test_acc", "test_acc_old", "test_acc_new"}
    assert load_teacher(f"checkpoint:{record['weights']}").meta.class_names[-2:] == ("k", "l")
    again = invoke(*_args(tmp_path, teacher, "--replay", "none"))
    assert again.exit_code == 2 and "already holds extended.safetensors" in again.output
    forced = invoke(*_args(tmp_path, teacher, "--no-distill", "--overwrite", "--align-head"))
    assert forced.exit_code == 0, forced.output
    record = json.loads((tmp_path / "out" / "extend.json").read_text())
    assert record["mode"] == "finetune" and record["config"]["align_head"] is True
    assert record["alignment"]["gamma"] > 0 and "weight aligning (gamma" in forced.output


@pytest.mark.parametrize("extra,message", [
    ((), "pass --replay DIR"),
    (("--replay", "none", "--replay", "x"), "--replay none cannot be combined"),
    (("--no-distill", "--replay", "x"), "--no-distill is plain fine-tuning"),
    (("--replay", "none", "--head", "fc"), "no layer named 'fc'"),
    (("--no-distill", "--head-ce-weight", "1"), "head_ce_weight (the head-only cross-entropy) "
                                                "needs distillation"),
])
def test_cli_errors_are_one_line_exit_2(invoke, cli_setup, extra, message):
    tmp_path, teacher = cli_setup
    result = invoke(*_args(tmp_path, teacher, *extra))
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "extend.json").exists()
