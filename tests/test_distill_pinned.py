"""invkit.distill pinned exactly: every config error message and its boundary, the KD loss,
augmentation and learning-rate plan against hand computations, the optimiser's settings,
one training run step by step against an independent re-implementation, the progress
calls, and the files ``save_distilled`` writes."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from invkit.distill import (
    DistillConfig, DistillResult, _EpochSampler, accuracy_on, augment, distill, kd_loss,
    lr_plan, make_optimizer, save_distilled, shuffled_batches,
)
from invkit.errors import InvkitError
from tests.progress_fakes import FakeProgress
from tests.tiny_classifier import TinyPlugin, random_uint8, tiny_teacher


class PairDataset(torch.utils.data.Dataset):
    """(image, int target) items from tensors: what GeneratedImages yields."""

    def __init__(self, images, targets):
        self.images, self.targets = images, targets

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


# ------------------------------------------------------------------------ config


@pytest.mark.parametrize("kwargs,message", [
    ({"optimizer": "lion"}, "optimizer 'lion' is not one of: sgd, adam"),
    ({"optimizer": "SGD"}, "optimizer 'SGD' is not one of: sgd, adam"),
    ({"epochs": 0}, "epochs=0 must be at least 1"),
    ({"batch_size": 0}, "batch_size=0 must be at least 1"),
    ({"eval_batch_size": 0}, "eval_batch_size=0 must be at least 1"),
    ({"lr": 0.0}, "lr=0.0 must be positive"),
    ({"lr": float("nan")}, "lr=nan is not a finite number"),
    ({"temperature": 0.0}, "temperature=0.0 must be positive"),
    ({"temperature": float("inf")}, "temperature=inf is not a finite number"),
    ({"momentum": -0.5}, "momentum=-0.5 must be at least 0"),
    ({"momentum": 1.5}, "momentum=1.5 must be at most 1"),
    ({"weight_decay": -1.0}, "weight_decay=-1.0 must be at least 0"),
    ({"grad_clip": 0.0}, "grad_clip=0.0 must be positive"),
    ({"grad_clip": float("nan")}, "grad_clip=nan is not a finite number"),
    ({"warmup_epochs": -1}, "warmup_epochs=-1 must be 0 or more"),
    ({"padding": -1}, "padding=-1 must be 0 or more"),
    ({"num_workers": -1}, "num_workers=-1 must be 0 or more"),
])
def test_config_errors_are_exact(kwargs, message):
    with pytest.raises(InvkitError) as err:
        DistillConfig(**kwargs)
    assert str(err.value) == message


def test_config_boundaries_and_defaults_are_accepted():
    """The value at each limit is accepted (one past it is refused above)."""
    DistillConfig(epochs=1, batch_size=1, eval_batch_size=1, momentum=0.0, weight_decay=0.0,
                  warmup_epochs=0, padding=0, num_workers=0, grad_clip=None, optimizer="adam")
    DistillConfig(momentum=1.0, lr=1e-9, temperature=1e-9, grad_clip=1e-9)
    assert dataclasses.asdict(DistillConfig()) == {
        "epochs": 30, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
        "weight_decay": 5e-4, "temperature": 4.0, "warmup_epochs": 1, "grad_clip": 5.0,
        "padding": None, "flip": True, "seed": 0, "device": "cpu", "eval_batch_size": 512,
        "num_workers": 0}


# -------------------------------------------------------------------------- pieces


def _ref_kd(s, t, temperature):
    p = torch.softmax(t.double() / temperature, 1)
    log_q = torch.log_softmax(s.double() / temperature, 1)
    return temperature ** 2 * (p * (p.log() - log_q)).sum(1).mean()


def test_kd_loss_value_dtype_and_temperature():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, -2.0]], dtype=torch.float64)
    for temperature in (1.0, 3.0):
        value = kd_loss(s, t, temperature)
        assert value.dtype == torch.float32 and value.shape == ()
        assert value.item() == pytest.approx(_ref_kd(s, t, temperature).item(), rel=1e-5)
    # Two classes at T = 1: KL([0.5, 0.5] || [sigmoid(2), sigmoid(-2)]) by hand.
    q = 1 / (1 + math.exp(-2))
    hand = 0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q))
    assert kd_loss(torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2), 1.0).item() == pytest.approx(
        hand, rel=1e-6)


def _ref_augment(x, padding, flip, seed):
    """Per-image crop offsets then flips, drawn from a generator in the documented order."""
    return _ref_augment_g(x, padding, flip, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("padding,flip", [(0, True), (1, False), (2, True), (3, False)])
def test_augment_equals_a_per_image_crop_and_flip(padding, flip):
    x = torch.rand(12, 3, 5, 7, generator=torch.Generator().manual_seed(9))
    out = augment(x, padding, flip, torch.Generator().manual_seed(4))
    assert out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out, _ref_augment(x, padding, flip, 4))


def test_make_optimizer_settings():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(DistillConfig(lr=0.2, momentum=0.7, weight_decay=0.01), params)
    assert type(sgd) is torch.optim.SGD
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (
        0.2, 0.7, 0.01, True)
    plain = make_optimizer(DistillConfig(momentum=0.0), params).param_groups[0]
    assert (plain["momentum"], plain["nesterov"]) == (0.0, False)
    adam = make_optimizer(DistillConfig(optimizer="adam", lr=0.3, weight_decay=0.02), params)
    assert type(adam) is torch.optim.Adam
    assert (adam.param_groups[0]["lr"], adam.param_groups[0]["weight_decay"]) == (0.3, 0.02)


def _ref_lr(lr, warmup, total, step):
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    return lr * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


@pytest.mark.parametrize("epochs,warmup_epochs,steps", [(3, 1, 4), (2, 0, 3), (1, 1, 4),
                                                        (2, 5, 2)])
def test_lr_plan_values(epochs, warmup_epochs, steps):
    """Warm-up over warmup_epochs x steps (at most total - 1 steps), then the cosine."""
    config = DistillConfig(epochs=epochs, lr=0.4, warmup_epochs=warmup_epochs)
    lr_at = lr_plan(config, steps)
    total = epochs * steps
    warmup = min(warmup_epochs * steps, total - 1)
    got = [lr_at(i) for i in range(total)]
    assert got == pytest.approx([_ref_lr(0.4, warmup, total, i) for i in range(total)],
                                rel=1e-12, abs=1e-15)


def test_shuffled_batches_cut_one_permutation():
    batches = shuffled_batches(7, 3, torch.Generator().manual_seed(5))
    order = torch.randperm(7, generator=torch.Generator().manual_seed(5)).tolist()
    assert [b.tolist() for b in batches] == [order[:3], order[3:6], order[6:]]
    assert [b.tolist() for b in shuffled_batches(4, 4, torch.Generator().manual_seed(5))] == [
        torch.randperm(4, generator=torch.Generator().manual_seed(5)).tolist()]


def _logits(network, images01):
    with torch.no_grad():
        return network.module(network.prepare(images01))


def test_accuracy_on_tensors_and_datasets():
    teacher = tiny_teacher(0)
    images, _ = random_uint8(9, seed=3)
    pred = _logits(teacher, images.float() / 255).argmax(1)
    targets = pred.clone()
    targets[:4] = (targets[:4] + 1) % 10  # 5 of 9 right
    assert accuracy_on(teacher, (images, targets)) == pytest.approx(5 / 9, rel=1e-6)
    assert accuracy_on(teacher, (images, targets), batch_size=2) == pytest.approx(5 / 9, rel=1e-6)
    on_dataset = accuracy_on(teacher, PairDataset(images, targets), 4, 0)
    assert on_dataset == pytest.approx(5 / 9, rel=1e-6)


def test_epoch_sampler_serves_the_set_batches():
    sampler = _EpochSampler()
    assert list(sampler) == [] and len(sampler) == 0
    sampler.steps = [[2, 0], [1]]
    assert list(sampler) == [[2, 0], [1]] and len(sampler) == 2


# ------------------------------------------------------------------------ training


def _ref_train(teacher, student, images, targets, config, padding):
    """An independent re-implementation of distill's loop (SGD + Nesterov, clipping)."""
    g = torch.Generator().manual_seed(config.seed)
    net = student.module
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    n = images.shape[0]
    spe = -(-n // config.batch_size)
    total = spe * config.epochs
    warmup = min(config.warmup_epochs * spe, total - 1)
    records = []
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=g)
        loss_sum, agree, hits, step = 0.0, 0, 0, 0
        net.train()
        for first in range(0, n, config.batch_size):
            index = order[first:first + config.batch_size]
            lr = _ref_lr(config.lr, warmup, total, epoch * spe + step)
            step += 1
            for group in opt.param_groups:
                group["lr"] = lr
            x = _ref_augment_g(images[index].float() / 255, padding, config.flip, g)
            with torch.no_grad():
                t = teacher.module(teacher.prepare(x))
            s = net(student.prepare(x))
            loss = _ref_kd(s, t, config.temperature).float()
            opt.zero_grad()
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            opt.step()
            loss_sum += loss.item() * len(index)
            agree += int((s.argmax(1) == t.argmax(1)).sum())
            if targets is not None:
                hits += int((s.argmax(1) == targets[index]).sum())
        net.eval()
        record = {"epoch": epoch + 1, "lr": lr, "loss": loss_sum / n, "train_agree": agree / n}
        if targets is not None:
            record["train_acc"] = hits / n
        records.append(record)
    return records


def _ref_augment_g(x, padding, flip, g):
    """Crop offsets (dy, then dx) from ``g``, then the flip decisions."""
    n, _, h, w = x.shape
    out = x.clone()
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        padded = torch.nn.functional.pad(x, (padding,) * 4, mode="replicate")
        for i in range(n):
            out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    if flip:
        mask = torch.rand(n, generator=g) < 0.5
        for i in range(n):
            if mask[i]:
                out[i] = out[i].flip(-1)
    return out


def _params(net):
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("with_targets", [True, False])
def test_distill_equals_an_independent_training_loop(with_targets):
    """Uneven batches (4, 4, 2), two epochs, warm-up, clipping, padding from the input size
    (8 // 8 = 1), temperature 3: the weights and every recorded number match."""
    images, _ = random_uint8(10, seed=11)
    teacher, student = tiny_teacher(0), tiny_teacher(1, arch="tiny-student")
    # Targets the student mostly hits (its own first predictions), so every batch counts.
    targets = _logits(student, images.float() / 255).argmax(1) if with_targets else None
    config = DistillConfig(epochs=2, batch_size=4, lr=0.05, temperature=3.0, grad_clip=0.01,
                           momentum=0.8, weight_decay=1e-3, flip=True, seed=7)
    teacher.module.train()  # distill puts the teacher in eval mode (BatchNorm statistics)
    reference = tiny_teacher(1, arch="tiny-student")
    progress = FakeProgress()
    result = distill(teacher, student, images, targets, config=config, progress=progress)
    expected = _ref_train(tiny_teacher(0), reference, images, targets, config, padding=1)
    assert torch.allclose(_params(student.module), _params(reference.module), rtol=1e-4,
                          atol=1e-6)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in result.history] == [
        pytest.approx(r, rel=1e-4) for r in expected]
    assert all(type(h["seconds"]) is float and h["seconds"] >= 0 for h in result.history)
    assert result.teacher_test_acc is None
    assert result.seconds >= result.history[-1]["seconds"] - 0.005  # that one is rounded
    assert not student.module.training
    assert all(not p.requires_grad for p in teacher.module.parameters())
    reports = [c for c in progress.calls if c[0] == "report"]
    assert progress.calls[0] == ("start_task", "distill tiny-kd -> tiny-student", 6)
    assert [c[0] for c in progress.calls] == ["start_task"] + (["advance"] * 3 + ["report"]) * 2
    assert all(c == ("advance", 1) for c in progress.calls if c[0] == "advance")
    assert reports == [("report", {"epoch": h["epoch"], "loss": h["loss"],
                                   "train_agree": h["train_agree"]}, None)
                       for h in result.history]


def test_distill_without_clipping_adam_and_explicit_padding():
    images, targets = random_uint8(6, seed=12)
    config = DistillConfig(epochs=1, batch_size=4, lr=0.5, temperature=2.0, grad_clip=None,
                           momentum=0.5, flip=False, padding=0, seed=1, warmup_epochs=0)
    student, reference = tiny_teacher(1, arch="s"), tiny_teacher(1, arch="s")
    result = distill(tiny_teacher(0), student, images, targets, config=config)
    expected = _ref_train(tiny_teacher(0), reference, images, targets, config, padding=0)
    assert torch.allclose(_params(student.module), _params(reference.module), rtol=1e-4,
                          atol=1e-6)
    assert {k: v for k, v in result.history[0].items() if k != "seconds"} == pytest.approx(
        expected[0], rel=1e-4)


def test_frozen_student_parameters_are_left_out():
    student = tiny_teacher(1, arch="s")
    student.module[0].weight.requires_grad_(False)
    frozen = student.module[0].weight.clone()
    images, targets = random_uint8(4, seed=2)
    distill(tiny_teacher(0), student, images, targets,
            config=DistillConfig(epochs=1, batch_size=4, weight_decay=0.1, flip=False))
    assert torch.equal(student.module[0].weight, frozen)


def test_dataset_training_equals_tensor_training_and_test_accuracies():
    images, targets = random_uint8(10, seed=13)
    test_images, test_targets = random_uint8(7, seed=14)
    config = DistillConfig(epochs=2, batch_size=4, lr=0.02, flip=True, seed=2, eval_batch_size=3)
    a, b = tiny_teacher(1, arch="s"), tiny_teacher(1, arch="s")
    teacher = tiny_teacher(0)
    on_tensor = distill(teacher, a, images, targets, config=config,
                        test=(test_images, test_targets))
    seen = []
    progress = FakeProgress()
    on_data = distill(teacher, b, PairDataset(images, targets), config=config,
                      test=PairDataset(test_images, test_targets), on_epoch=seen.append,
                      progress=progress)
    assert torch.equal(_params(a.module), _params(b.module))
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in on_data.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in on_tensor.history]
    assert seen == on_data.history and set(strip[0]) == {
        "epoch", "lr", "loss", "train_agree", "train_acc", "test_acc"}
    t_pred = _logits(teacher, test_images.float() / 255).argmax(1)
    assert on_data.teacher_test_acc == (t_pred == test_targets).float().mean().item()
    s_pred = _logits(b, test_images.float() / 255).argmax(1)
    assert on_data.history[-1]["test_acc"] == (s_pred == test_targets).float().mean().item()
    assert on_data.final_test_acc == on_data.history[-1]["test_acc"]
    assert [c for c in progress.calls if c[0] == "report"][-1][2] == on_data.final_test_acc


def test_distill_input_errors_are_exact():
    teacher = tiny_teacher(0)
    with pytest.raises(InvkitError) as err:
        distill(teacher, tiny_teacher(1, arch="s3", num_classes=3), torch.zeros(2, 3, 8, 8))
    assert str(err.value) == ("student 's3' has 3 classes but teacher 'tiny-kd' has 10; "
                              "pick a student built for the teacher's classes")
    with pytest.raises(InvkitError) as err:
        distill(teacher, tiny_teacher(1), PairDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0)))
    assert str(err.value) == "no training images (the dataset is empty)"
    for shape in [(0, 3, 8, 8), (3, 8, 8)]:
        with pytest.raises(InvkitError) as err:
            distill(teacher, tiny_teacher(1), torch.zeros(shape))
        assert str(err.value) == f"no training images (got a tensor of shape {shape})"
    # One image is enough (the boundary of the emptiness checks).
    one = distill(teacher, tiny_teacher(1), PairDataset(torch.zeros(1, 3, 8, 8), [3]),
                  config=DistillConfig(epochs=1, flip=False))
    assert one.history[0]["train_acc"] in (0.0, 1.0)


# ------------------------------------------------------------------------- results


def test_result_summary_and_final_accuracy():
    student = tiny_teacher(1, arch="tiny-kd-student")
    config = DistillConfig(epochs=2)
    empty = DistillResult(student=student, config=config)
    assert empty.final_test_acc is None
    assert empty.summary()["best_test_acc"] is None
    history = [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.75},
               {"epoch": 3, "test_acc": 0.25}]
    result = DistillResult(student=student, config=config, history=history,
                           teacher_test_acc=0.9, seconds=3.14159)
    assert result.final_test_acc == 0.25
    assert result.summary() == {
        "student": "tiny-kd-student", "student_arch": "tiny-kd-student",
        "config": dataclasses.asdict(config), "teacher_test_acc": 0.9,
        "final_test_acc": 0.25, "best_test_acc": 0.75, "seconds": 3.14, "epochs": history}
    no_test = DistillResult(student=student, config=config, history=[{"epoch": 1}])
    assert no_test.final_test_acc is None and no_test.summary()["best_test_acc"] is None


def test_save_distilled_files_and_inherited_class_names(tmp_path, register_plugin):
    register_plugin(TinyPlugin(), "tiny-kd-plugin")
    names = tuple("abcdefghij")
    teacher = tiny_teacher(0, class_names=names)
    student = tiny_teacher(1, arch="tiny-kd-student")
    history = [{"epoch": 1, "loss": 0.5, "test_acc": 0.4}]
    result = DistillResult(student=student, config=DistillConfig(epochs=1), history=history,
                           teacher_test_acc=0.8, seconds=1.005)
    path = save_distilled(result, tmp_path / "a" / "b", teacher, extra={"images": 10})
    assert path == tmp_path / "a" / "b" / "student.safetensors" and path.is_file()
    assert result.student is not student and result.student.meta.class_names == names
    assert result.student.module is student.module
    from invkit.teachers import load_teacher

    assert load_teacher(f"checkpoint:{path}").meta.class_names == names
    record = json.loads((tmp_path / "a" / "b" / "distill.json").read_text())
    assert record == {**result.summary(), "weights": str(path), "teacher": "tiny-kd",
                      "images": 10}
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == [
        "distill.json", "student.safetensors"]


def test_save_distilled_keeps_a_students_names_and_needs_no_teacher(tmp_path, register_plugin):
    register_plugin(TinyPlugin(), "tiny-kd-plugin")
    student = tiny_teacher(1, arch="tiny-kd-student", class_names=tuple("0123456789"))
    result = DistillResult(student=student, config=DistillConfig(epochs=1))
    save_distilled(result, tmp_path, tiny_teacher(0, class_names=tuple("abcdefghij")))
    assert result.student is student
    nameless = DistillResult(student=tiny_teacher(1, arch="tiny-kd-student"),
                             config=DistillConfig(epochs=1))
    kept = nameless.student
    save_distilled(nameless, tmp_path / "n", tiny_teacher(0))  # teacher without names
    assert nameless.student is kept
    save_distilled(nameless, tmp_path / "t")
    record = json.loads((tmp_path / "t" / "distill.json").read_text())
    assert "teacher" not in record and record == {**nameless.summary(),
                                                  "weights": str(tmp_path / "t" /
                                                                 "student.safetensors")}
