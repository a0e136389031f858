"""invkit.extend pinned exactly: every error message (config, new data, replay, test data,
alignment), class-name matching, the replay cycle, split accuracies, the progress calls and
log lines, training step by step against an independent re-implementation, and the files
``save_extended`` writes."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from invkit.distill import DistillConfig
from invkit.extend import (
    REPORT_FILE, WEIGHTS_FILE, ExtendConfig, ExtendResult, NewClasses, _Cycle, _param_groups,
    align_new_rows, class_names_of, combined_names, extend, load_extend_test, load_new_classes,
    load_replay, old_share_kd, save_extended, split_accuracy, widen,
)
from invkit.output import save_png
from tests.expect import invkit_error
from tests.progress_fakes import FakeProgress
from tests.tiny_classifier import SIZE, TinyPlugin, tiny_teacher

OLD = tuple("abcdefghij")


def named(seed: int = 0):
    return tiny_teacher(seed, arch="tiny-kd", class_names=OLD)


def write_folder(root: Path, classes: dict[str, int], seed: int = 0, size=(SIZE, SIZE)) -> Path:
    """``classes`` = {folder name: image count}; random PNGs of ``size`` (height, width)."""
    g = torch.Generator().manual_seed(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            save_png(root / name / f"{i:03d}.png", torch.rand(3, *size, generator=g))
    return root


def write_shard(root: Path, targets: list[int], size: int = SIZE) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    images = torch.zeros(len(targets), 3, size, size, dtype=torch.uint8)
    save_file({"images": images, "targets": torch.tensor(targets)},
              str(root / "shard_00000.safetensors"))
    return root


def _new(n: int = 10, seed: int = 1) -> NewClasses:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return NewClasses(images=images, targets=torch.arange(n) % 2, names=("k", "l"))


def _replay(n: int = 5, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)


def _training(**kwargs) -> DistillConfig:
    base = dict(epochs=1, batch_size=4, lr=0.05, flip=False, padding=0, temperature=2.0)
    return DistillConfig(**{**base, **kwargs})


# -------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs,message", [
    ({"replay_softmax": "new"}, "replay_softmax 'new' is not one of: all, old"),
    ({"new_ce": "old"}, "new_ce 'old' is not one of: all, new"),
    ({"ce_weight": -0.5}, "ce_weight=-0.5 must be 0 or more"),
    ({"replay_weight": -1}, "replay_weight=-1 must be 0 or more"),
    ({"lwf_weight": float("nan")}, "lwf_weight=nan must be 0 or more"),
    ({"replay_ce_weight": -0.1}, "replay_ce_weight=-0.1 must be 0 or more"),
    ({"backbone_lr_scale": -2.0}, "backbone_lr_scale=-2.0 must be 0 or more"),
    ({"head_ce_weight": -1.0}, "head_ce_weight=-1.0 must be 0 or more"),
    ({"distill": False, "head_ce_weight": 0.5},
     "head_ce_weight (the head-only cross-entropy) needs distillation: plain fine-tuning "
     "trains the whole network on the new images"),
    ({"replay_batch_size": 0}, "replay_batch_size=0 must be at least 1"),
])
def test_config_errors_are_exact(kwargs, message):
    assert invkit_error(ExtendConfig, **kwargs) == message


def test_config_boundaries_and_defaults():
    ExtendConfig(ce_weight=0, replay_weight=0, lwf_weight=0, replay_ce_weight=0,
                 backbone_lr_scale=0, head_ce_weight=0, distill=False, replay_batch_size=1,
                 replay_softmax="old", new_ce="new")
    ExtendConfig(head_ce_weight=0.1)
    assert dataclasses.asdict(ExtendConfig()) == {
        "training": dataclasses.asdict(DistillConfig(epochs=20, lr=0.003, temperature=1.0)),
        "ce_weight": 1.0, "replay_weight": 1.0, "lwf_weight": 1.0, "distill": True,
        "replay_batch_size": None, "head": None, "replay_softmax": "all",
        "replay_ce_weight": 0.0, "new_ce": "all", "backbone_lr_scale": 1.0,
        "head_ce_weight": 0.0, "align_head": False}


# ------------------------------------------------------------------------- classes


def test_class_names_of_and_combined_names():
    assert class_names_of(named()) == OLD
    digits = tuple(str(i) for i in range(10))
    assert class_names_of(tiny_teacher(0)) == digits  # no names recorded
    assert class_names_of(tiny_teacher(0, class_names=("a", "b"))) == digits  # wrong count
    assert class_names_of(tiny_teacher(0, num_classes=3, class_names=["x", "y", "z"])) == (
        "x", "y", "z")
    assert combined_names(named(), _new()) == OLD + ("k", "l")
    assert combined_names(tiny_teacher(0), _new()) == digits + ("k", "l")


def test_widen_makes_a_trainable_named_copy():
    teacher = named()
    for p in teacher.module.parameters():
        p.requires_grad_(False)
    teacher.module.train()
    wide = widen(teacher, ["k", "l", "m"])
    assert wide.name == "tiny-kd+3" and wide.meta.num_classes == 13
    assert wide.meta.class_names == OLD + ("k", "l", "m")
    assert wide.meta.input_size == SIZE and wide.meta.arch == "tiny-kd"
    assert all(p.requires_grad for p in wide.module.parameters())
    assert not wide.module.training and wide.module[-1].out_features == 13
    assert teacher.module[-1].out_features == 10


# ---------------------------------------------------------------------------- data


def test_load_new_classes_targets_names_and_source(tmp_path):
    root = write_folder(tmp_path / "new", {"003_k": 2, "007_l": 1, "009": 1})
    new = load_new_classes(root, named())
    assert new.names == ("k", "l", "009") and new.targets.tolist() == [0, 0, 1, 2]
    assert new.targets.dtype == torch.int64 and new.source == str(root)
    assert new.images.dtype == torch.uint8 and new.images.shape == (4, 3, SIZE, SIZE)
    # A folder holding an image next to other files is fine; names compare loosely.
    (root / "009" / "notes.txt").write_text("x")
    assert load_new_classes(str(root), named()).names == ("k", "l", "009")


def test_load_new_classes_errors_are_exact(tmp_path):
    teacher = named()
    shards = write_shard(tmp_path / "shards", [0, 1])
    assert invkit_error(load_new_classes, shards, teacher) == (
        f"new data {str(shards)!r} holds shards; it must be an ImageFolder (one folder per "
        "new class, named by class)")
    only_text = write_folder(tmp_path / "t", {"k": 1, "l": 0})
    (only_text / "l" / "a.txt").write_text("x")
    (only_text / "l" / "b.png").mkdir()  # a directory named like an image is no image
    assert invkit_error(load_new_classes, only_text, teacher) == (
        f"class folder {str(only_text / 'l')!r} of the new data holds no images")
    known = write_folder(tmp_path / "known", {"C-": 1, "k": 1})
    assert invkit_error(load_new_classes, known, teacher) == (
        f"new class 'C-' ({str(known / 'C-')!r}) is already one of teacher 'tiny-kd''s "
        "classes ('c'); the new data must hold only classes the teacher does not know")
    twice = write_folder(tmp_path / "twice", {"K_1": 1, "k1": 1})
    assert invkit_error(load_new_classes, twice, teacher) == (
        f"new data {str(twice)!r} names a class twice: K_1, k1")
    wide = write_folder(tmp_path / "wide", {"k": 1}, size=(SIZE, 6))
    assert invkit_error(load_new_classes, wide, teacher) == (
        f"new data {str(wide)!r} holds 6x8 images but teacher 'tiny-kd' takes 8x8: "
        "resize them first")


def test_load_replay_checks_classes_names_and_sizes(tmp_path):
    teacher = named()
    write_folder(tmp_path / "good" / "images", {"000_a": 2, "003": 1, "009_J": 1})
    shard = write_shard(tmp_path / "shard", [9, 0])
    images = load_replay([tmp_path / "good", shard], teacher)
    assert images.shape == (6, 3, SIZE, SIZE) and images.dtype == torch.uint8
    # An ImageFolder after a shard directory is checked too.
    beyond = write_folder(tmp_path / "beyond", {"010_x": 1})
    assert invkit_error(load_replay, [shard, beyond], teacher) == (
        f"replay data {str(beyond)!r} has class 10 ('010_x') but teacher 'tiny-kd' has 10 "
        "classes: replay images must be generated from the teacher being extended")
    other = write_folder(tmp_path / "other", {"002_zebra": 1})
    assert invkit_error(load_replay, [str(shard), str(other)], teacher) == (
        f"replay class folder '002_zebra' in {str(other)!r} is not teacher 'tiny-kd''s "
        "class 2 ('c'): replay images must be generated from the teacher being extended")
    bad_shard = write_shard(tmp_path / "bad", [3, 10])
    assert invkit_error(load_replay, [bad_shard], teacher) == (
        "replay data holds class 10 but teacher 'tiny-kd' has 10 classes: replay images "
        "must be generated from the teacher being extended")
    assert invkit_error(load_replay, [write_shard(tmp_path / "neg", [-1, 2])], teacher).startswith(
        "replay data holds class -1 but")
    big = write_shard(tmp_path / "big", [1], size=16)
    big2 = write_shard(tmp_path / "big2", [2], size=16)
    assert invkit_error(load_replay, [big, str(big2)], teacher) == (
        f"replay data {big}, {big2} holds 16x16 images but teacher 'tiny-kd' takes 8x8: "
        "resize them first")


def test_load_extend_test_maps_names_and_indices(tmp_path):
    names = OLD + ("k", "l")
    root = write_folder(tmp_path / "test", {"000_L": 1, "001_b": 2, "005": 1, "011": 1})
    images, targets = load_extend_test(root, names)
    assert targets.tolist() == [11, 1, 1, 5, 11] and images.shape == (5, 3, SIZE, SIZE)
    assert targets.dtype == torch.int64
    plain = write_folder(tmp_path / "plain", {"k": 1, "a": 1})  # sorted: a, k
    assert load_extend_test(plain, names)[1].tolist() == [0, 10]
    shard = write_shard(tmp_path / "shard", [11, 0, 3])
    assert load_extend_test(shard, names)[1].tolist() == [11, 0, 3]
    assert invkit_error(load_extend_test, write_shard(tmp_path / "s12", [12]), names) == (
        f"test data {str(tmp_path / 's12')!r} holds class 12, outside the extended "
        "network's 12 classes")
    unknown = write_folder(tmp_path / "unknown", {"000_zz": 1})
    assert invkit_error(load_extend_test, unknown, names) == (
        f"test class 'zz' in {str(unknown)!r} is neither one of the teacher's classes nor a "
        "new class (a, b, c, d, e, f, g, h, i, j, k, l)")
    assert invkit_error(load_extend_test, unknown, names + ("m",)) == (
        f"test class 'zz' in {str(unknown)!r} is neither one of the teacher's classes nor a "
        "new class (a, b, c, d, e, f, g, h, i, j, k, l, ...)")
    index12 = write_folder(tmp_path / "i12", {"012": 1})
    assert invkit_error(load_extend_test, index12, names) == (
        f"test class '012' in {str(index12)!r} is neither one of the teacher's classes nor "
        "a new class (a, b, c, d, e, f, g, h, i, j, k, l)")


def test_load_extend_test_digits_is_mapped_by_name():
    from invkit.data import load_test_data

    reference = load_test_data("digits")[1]
    names = tuple(str(9 - i) for i in range(10)) + ("x",)
    images, targets = load_extend_test("digits", names)
    assert torch.equal(targets, 9 - reference) and images.shape[0] == reference.shape[0]


# ------------------------------------------------------------------------ training


class Fixed(torch.nn.Module):
    """Logits = the first pixel's three channels, padded with zeros to ``classes``."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return F.pad(x[:, :, 0, 0], (0, self.classes - 3))


def _fixed_teacher(classes: int = 3):
    from invkit.specs import Teacher, TeacherMeta

    meta = TeacherMeta(arch="fixed", input_size=2, num_classes=classes, mean=(0.0,) * 3,
                       std=(1.0,) * 3)
    return Teacher(module=Fixed(classes), meta=meta, name="fixed")


def _images(winners):
    """2x2 images whose first pixel makes class ``w`` win (channel w set to 1)."""
    x = torch.zeros(len(winners), 3, 2, 2)
    for i, w in enumerate(winners):
        x[i, w, 0, 0] = 1.0
    return x


def test_split_accuracy_counts_old_and_new():
    net = _fixed_teacher()
    x = _images([0, 1, 2, 2, 1])
    targets = torch.tensor([0, 2, 2, 1, 1])  # right: 0, 2, 4
    got = split_accuracy(net, (x, targets), old_classes=2, batch_size=2)
    assert got == {"test_acc": pytest.approx(3 / 5), "test_acc_old": pytest.approx(2 / 3),
                   "test_acc_new": pytest.approx(1 / 2)}
    assert split_accuracy(net, (x, targets), old_classes=3)["test_acc_new"] is None
    assert split_accuracy(net, (x, targets), old_classes=0)["test_acc_old"] is None
    assert split_accuracy(net, (x, targets), old_classes=1) == {
        "test_acc": pytest.approx(3 / 5), "test_acc_old": 1.0,
        "test_acc_new": pytest.approx(2 / 4)}


def test_old_share_kd_by_hand():
    new = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    old = torch.tensor([[0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    for t in (1.0, 3.0):
        total = 0.0
        for row_new, row_old in zip(new.tolist(), old.tolist()):
            z = sum(math.exp(v / t) for v in row_new)
            zo = sum(math.exp(v / t) for v in row_old)
            for j in range(2):
                p = math.exp(row_old[j] / t) / zo
                total += p * (math.log(p) - (row_new[j] / t - math.log(z)))
        value = old_share_kd(new, old, t)
        assert value.dtype == torch.float32 and value.shape == ()
        assert value.item() == pytest.approx(t * t * total / 2, rel=1e-5)


def test_align_new_rows_boundaries_and_zero_rows():
    net = widen(named(), ("k", "l"))
    head = net.module[-1]
    for old in (0, 12, -1, 13):
        assert invkit_error(align_new_rows, net, old) == (
            f"cannot align the head: {old} old classes of 12")
    with torch.no_grad():
        head.weight[:11] = 0.0
        head.weight[:11, 0] = 2.0   # old rows 0..10 (old = 11): norm 2
        head.weight[11] = 0.0
        head.weight[11, 1] = 4.0    # the one new row: norm 4
        head.bias[:] = 1.0
    info = align_new_rows(net, 11)
    assert info == {"gamma": 0.5, "old_norm": 2.0, "new_norm": 4.0}
    assert head.weight[11, 1].item() == 2.0 and head.bias.tolist() == [1.0] * 11 + [0.5]
    with torch.no_grad():
        head.weight[1:] = 0.0
    info = align_new_rows(net, 1)   # new rows all zero: nothing to scale by
    assert info["gamma"] == 1.0 and info["new_norm"] == 0.0 and info["old_norm"] == 2.0
    no_bias = dataclasses.replace(_fixed_teacher(), module=torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 3, bias=False)))
    with torch.no_grad():
        no_bias.module[1].weight[:] = torch.tensor([[3.0] + [0.0] * 11, [0.0] * 12,
                                                    [0.0] * 11 + [6.0]])
    info = align_new_rows(no_bias, 2)
    assert info["gamma"] == pytest.approx(0.25) and no_bias.module[1].weight[2, 11] == 1.5


def test_align_new_rows_scales_up_new_rows_shorter_than_one():
    """Any positive norm is scaled by, including one below 1 (only zero rows are left)."""
    net = widen(named(), ("k",))
    head = net.module[-1]
    with torch.no_grad():
        head.weight[:] = 0.0
        head.weight[:10, 0] = 1.0   # old rows: norm 1
        head.weight[10, 0] = 0.25   # the new row: norm 0.25
        head.bias[:] = 0.5
    info = align_new_rows(net, 10)
    assert info == {"gamma": 4.0, "old_norm": 1.0, "new_norm": 0.25}
    assert head.weight[10, 0].item() == 1.0 and head.bias[10].item() == 2.0


def test_cycle_reshuffles_after_each_pass():
    cycle = _Cycle(5, 3, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    first = torch.randperm(5, generator=g).tolist()
    assert cycle.next().tolist() == first[:3]
    got = cycle.next().tolist()
    second = torch.randperm(5, generator=g).tolist()
    assert got == first[3:] + second[:1]
    assert cycle.next().tolist() == second[1:4]
    small = _Cycle(2, 5, torch.Generator().manual_seed(1))  # batch larger than the set
    order = torch.randperm(2, generator=torch.Generator().manual_seed(1)).tolist()
    assert small.next().tolist() == order and small.next().numel() == 2


def test_param_groups_scale_the_backbone():
    net = widen(named(), ("k",))
    groups = _param_groups(net, ExtendConfig(backbone_lr_scale=0.25))
    head = net.module[-1]
    assert [g["lr_scale"] for g in groups] == [1.0, 0.25]
    assert groups[0]["params"] == [head.weight, head.bias]
    rest = [p for n, p in net.module.named_parameters() if not n.startswith("7.")]
    assert len(groups[1]["params"]) == len(rest) == 6
    assert all(a is b for a, b in zip(groups[1]["params"], rest))
    frozen = _param_groups(net, ExtendConfig(backbone_lr_scale=0.0))
    assert len(frozen) == 1 and all(not p.requires_grad for p in rest)
    assert head.weight.requires_grad


def _kd(s, t, temperature, share=False):
    """T^2 KL(softmax(t/T) || q) with q the softmax of s/T, or its first classes' share."""
    log_q = torch.log_softmax(s.double() / temperature, 1)[:, :t.shape[1]]
    p = torch.softmax(t.double() / temperature, 1)
    return (temperature ** 2 * (p * (p.log() - log_q)).sum(1).mean()).float()


def _augment(x, padding, flip, g):
    """Per-image replicate-padded crop, then flip, drawn from ``g`` in that order."""
    n, _, h, w = x.shape
    out = x.clone()
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        padded = F.pad(x, (padding,) * 4, mode="replicate")
        for i in range(n):
            out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    if flip:
        mask = torch.rand(n, generator=g) < 0.5
        for i in range(n):
            if mask[i]:
                out[i] = out[i].flip(-1)
    return out


def _ref_extend(teacher, new, replay, config, padding, seed):
    """An independent re-implementation of extend's loop."""
    train = config.training
    g = torch.Generator().manual_seed(train.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = widen(teacher, new.names)
    module, head = net.module, net.module[-1]
    head_ids = {id(p) for p in head.parameters()}
    opt = torch.optim.SGD([{"params": list(head.parameters()), "s": 1.0},
                           {"params": [p for p in module.parameters() if id(p) not in head_ids],
                            "s": config.backbone_lr_scale}],
                          lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                          nesterov=True)
    feats = []
    head.register_forward_pre_hook(lambda _, a: feats.append(a[0]))
    n, old = new.images.shape[0], teacher.meta.num_classes
    rb = config.replay_batch_size or train.batch_size
    order, at = torch.randperm(replay.shape[0], generator=g), 0
    spe = -(-n // train.batch_size)
    total = spe * train.epochs
    warmup = min(train.warmup_epochs * spe, total - 1)
    records = []
    for epoch in range(train.epochs):
        perm = torch.randperm(n, generator=g)
        module.train()
        sums, hits = {}, 0
        for step, first in enumerate(range(0, n, train.batch_size)):
            k = epoch * spe + step
            lr = train.lr * ((k + 1) / warmup if k < warmup else 0.5 * (1 + math.cos(
                math.pi * (k - warmup) / max(total - warmup, 1))))
            for group in opt.param_groups:
                group["lr"] = lr * group["s"]
            index = perm[first:first + train.batch_size]
            x = _augment(new.images[index].float() / 255, padding, train.flip, g)
            b = x.shape[0]
            ridx = []
            while len(ridx) < min(rb, replay.shape[0]):
                if at == replay.shape[0]:
                    order, at = torch.randperm(replay.shape[0], generator=g), 0
                ridx.append(int(order[at]))
                at += 1
            x = torch.cat([x, _augment(replay[ridx].float() / 255, padding, train.flip, g)])
            y = new.targets[index] + old
            feats.clear()
            logits = module(net.prepare(x))
            with torch.no_grad():
                t = teacher.module(teacher.prepare(x))
            terms = {"ce": F.cross_entropy(logits[:b], y) if config.new_ce == "all"
                     else F.cross_entropy(logits[:b, old:], y - old),
                     "lwf_kd": _kd(logits[:b, :old], t[:b], train.temperature)}
            terms["replay_kd"] = (_kd(logits[b:], t[b:], train.temperature)
                                  if config.replay_softmax == "all"
                                  else _kd(logits[b:, :old], t[b:], train.temperature))
            loss = (config.ce_weight * terms["ce"] + config.lwf_weight * terms["lwf_kd"]
                    + config.replay_weight * terms["replay_kd"])
            if config.replay_ce_weight > 0:
                terms["replay_ce"] = F.cross_entropy(logits[b:], t[b:].argmax(1))
                loss = loss + config.replay_ce_weight * terms["replay_ce"]
            if config.head_ce_weight > 0:
                terms["head_ce"] = F.cross_entropy(head(feats[0].detach()),
                                                   torch.cat([y, t[b:].argmax(1)]))
                loss = loss + config.head_ce_weight * terms["head_ce"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), train.grad_clip)
            opt.step()
            for key, value in {"loss": loss, **terms}.items():
                sums[key] = sums.get(key, 0.0) + value.item() * b
            hits += int((logits[:b].argmax(1) == y).sum())
        module.eval()
        records.append({"epoch": epoch + 1, "lr": lr, **{k: v / n for k, v in sums.items()},
                        "train_acc_new": hits / n})
    return net, records


def _params(net):
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("variant", ["all", "old"])
def test_extend_equals_an_independent_training_loop(variant):
    """Uneven batches (4, 4, 2) over 2 epochs, replay batches of 3 cycling over 5 images,
    warm-up, clipping, default padding (8 // 8 = 1), flips, every loss term weighted."""
    training = DistillConfig(epochs=2, batch_size=4, lr=0.05, temperature=2.0, grad_clip=0.5,
                             momentum=0.8, weight_decay=1e-3, flip=True, seed=3)
    extra = ({"replay_ce_weight": 0.7} if variant == "all" else
             {"replay_softmax": "old", "new_ce": "new", "head_ce_weight": 0.4,
              "backbone_lr_scale": 0.5})
    config = ExtendConfig(training=training, ce_weight=1.5, replay_weight=2.0, lwf_weight=0.5,
                          replay_batch_size=3, **extra)
    teacher, new, replay = named(), _new(), _replay()
    teacher.module.train()  # extend puts the teacher in eval mode (BatchNorm statistics)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        result = extend(teacher, new, replay, config=config)
    net, expected = _ref_extend(named(), new, replay, config, padding=1, seed=6)
    assert torch.allclose(_params(result.network.module), _params(net.module), rtol=1e-4,
                          atol=1e-6)
    got = [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]
    assert got == [pytest.approx(r, rel=1e-4, abs=1e-6) for r in expected]
    assert result.mode == "replay" and result.old_classes == 10
    assert not result.network.module.training


def test_extend_errors_and_modes():
    teacher = named()
    empty = NewClasses(torch.zeros(0, 3, SIZE, SIZE, dtype=torch.uint8),
                       torch.zeros(0, dtype=torch.int64), ("k",))
    assert invkit_error(extend, teacher, empty) == "no new-class images to train on"
    flat = NewClasses(torch.zeros(3, SIZE, SIZE, dtype=torch.uint8),
                      torch.zeros(3, dtype=torch.int64), ("k",))
    assert invkit_error(extend, teacher, flat) == "no new-class images to train on"
    assert invkit_error(extend, teacher, _new(), _replay(), config=ExtendConfig(
        training=_training(), distill=False)) == (
        "plain fine-tuning (no distillation) uses no replay images: drop them (--replay none) "
        "or keep distillation on")
    one = NewClasses(_new().images[:1], torch.zeros(1, dtype=torch.int64), ("k",))
    config = ExtendConfig(training=_training())
    assert extend(teacher, one, config=config).mode == "lwf"
    no_replay = extend(teacher, _new(4), _replay(0), config=config)
    assert no_replay.mode == "lwf" and "replay_kd" not in no_replay.history[0]
    finetune = extend(teacher, _new(4), None, config=ExtendConfig(training=_training(),
                                                                  distill=False))
    assert finetune.mode == "finetune"
    assert set(finetune.history[0]) == {"epoch", "lr", "loss", "ce", "train_acc_new", "seconds"}
    assert set(no_replay.history[0]) == {"epoch", "lr", "loss", "ce", "lwf_kd", "train_acc_new",
                                         "seconds"}
    assert all(not p.requires_grad for p in teacher.module.parameters())


def test_extend_progress_logs_and_test_accuracies():
    teacher, new = named(), _new(6)
    test_images = torch.randint(0, 256, (6, 3, SIZE, SIZE),
                                generator=torch.Generator().manual_seed(8), dtype=torch.uint8)
    test_targets = torch.tensor([0, 1, 2, 3, 10, 11])
    test = (test_images, test_targets)
    config = ExtendConfig(training=_training(epochs=2, eval_batch_size=4), align_head=True)
    progress, seen = FakeProgress(), []
    result = extend(teacher, new, _replay(), config=config, test=test, progress=progress,
                    on_epoch=seen.append)
    with torch.no_grad():
        pred = teacher.module(teacher.prepare(test_images.float() / 255)).argmax(1)
    assert result.teacher_test_acc_old == pytest.approx(
        (pred[:4] == test_targets[:4]).float().mean().item())
    assert [h["epoch"] for h in seen] == [1, 2]
    final = result.final
    assert final == result.history[-1]
    assert {k: final[k] for k in ("test_acc", "test_acc_old", "test_acc_new")} == split_accuracy(
        result.network, test, 10)
    before = result.alignment["before"]
    assert set(result.alignment) == {"gamma", "old_norm", "new_norm", "before"}

    def line(r):
        return (f"all {100 * r['test_acc']:.1f}%, old {100 * r['test_acc_old']:.1f}%, "
                f"new {100 * r['test_acc_new']:.1f}%")

    h1 = result.history[0]
    keys = ("loss", "ce", "replay_kd", "lwf_kd")
    assert progress.calls == [
        ("start_task", "extend tiny-kd by 2 classes (replay)", 4),
        ("advance", 1), ("advance", 1),
        ("report", {k: h1[k] for k in keys}, h1["test_acc"]),
        ("log", "epoch 1/2: " + line(h1)),
        ("advance", 1), ("advance", 1),
        ("report", {k: seen[1][k] for k in keys}, before["test_acc"]),
        ("log", "epoch 2/2: " + line(before)),
        ("log", f"weight aligning (gamma {result.alignment['gamma']:.3f}): " + line(final)),
    ]
    # Without old-class test images the teacher has no accuracy; lines drop missing splits.
    progress = FakeProgress()
    only_new = (test_images[4:], test_targets[4:])
    quiet = extend(teacher, new, None, config=ExtendConfig(training=_training()),
                   test=only_new, progress=progress)
    assert quiet.teacher_test_acc_old is None and quiet.final["test_acc_old"] is None
    assert progress.calls[-1] == (
        "log", f"epoch 1/1: all {100 * quiet.final['test_acc']:.1f}%, "
               f"new {100 * quiet.final['test_acc_new']:.1f}%")
    assert progress.calls[-2][1] == {k: quiet.final[k] for k in ("loss", "ce", "lwf_kd")}


def test_extend_align_without_test_and_without_progress():
    result = extend(named(), _new(4), None,
                    config=ExtendConfig(training=_training(), align_head=True))
    assert set(result.alignment) == {"gamma", "old_norm", "new_norm"}
    assert "test_acc" not in result.final
    progress = FakeProgress()
    extend(named(), _new(4), None, config=ExtendConfig(training=_training(), align_head=True),
           progress=progress)
    assert [c[0] for c in progress.calls] == ["start_task", "advance", "report"]


# ------------------------------------------------------------------------- results


def test_result_summary_and_final():
    network = widen(named(), ("k", "l"))
    config = ExtendConfig(training=_training())
    empty = ExtendResult(network=network, config=config, old_classes=10, mode="lwf")
    assert empty.final == {}
    history = [{"epoch": 1, "test_acc": 0.1}, {"epoch": 2, "test_acc": 0.5, "test_acc_new": 0.25}]
    result = ExtendResult(network=network, config=config, old_classes=10, mode="replay",
                          history=history, teacher_test_acc_old=0.75, seconds=2.345678,
                          alignment={"gamma": 2.0})
    assert result.final is history[-1]
    assert result.summary() == {
        "network": "tiny-kd+2", "arch": "tiny-kd", "mode": "replay",
        "config": dataclasses.asdict(config), "old_classes": list(OLD),
        "new_classes": ["k", "l"], "class_names": list(OLD) + ["k", "l"],
        "teacher_test_acc_old": 0.75, "alignment": {"gamma": 2.0},
        "final": {"test_acc": 0.5, "test_acc_old": None, "test_acc_new": 0.25},
        "seconds": 2.35, "epochs": history}


def test_save_extended_files_and_metadata(tmp_path, register_plugin):
    register_plugin(TinyPlugin(), "tiny-kd-plugin")
    teacher = named()
    network = widen(teacher, ("k", "l"))
    history = [{"epoch": 1, "test_acc": 0.123456, "test_acc_old": None, "test_acc_new": 0.5}]
    result = ExtendResult(network=network, config=ExtendConfig(training=_training()),
                          old_classes=10, mode="lwf", history=history, seconds=1.0)
    out = tmp_path / "a" / "b"
    path = save_extended(result, out, teacher, extra={"new_data": "x"})
    assert (WEIGHTS_FILE, REPORT_FILE) == ("extended.safetensors", "extend.json")
    assert path == out / "extended.safetensors" and path.is_file()
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert {k: meta.get(k) for k in ("extended_from", "old_classes", "extend_mode", "test_acc",
                                     "test_acc_old", "test_acc_new")} == {
        "extended_from": "tiny-kd", "old_classes": "10", "extend_mode": "lwf",
        "test_acc": "0.1235", "test_acc_old": None, "test_acc_new": "0.5000"}
    record = json.loads((out / "extend.json").read_text())
    assert record == {**json.loads(json.dumps(result.summary())), "weights": str(path),
                      "teacher": "tiny-kd", "new_data": "x"}
    bare = ExtendResult(network=network, config=ExtendConfig(training=_training()),
                        old_classes=10, mode="finetune",
                        history=[{"epoch": 1, "test_acc_old": 0.98765}])
    path = save_extended(bare, tmp_path / "bare")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert (meta["extended_from"], meta["test_acc_old"], meta.get("test_acc")) == (
        "", "0.9877", None)
    record = json.loads((tmp_path / "bare" / "extend.json").read_text())
    assert "teacher" not in record and record["weights"] == str(path)
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == [
        "extend.json", "extended.safetensors"]


def test_summary_of_a_network_without_class_names():
    network = tiny_teacher(0, num_classes=12)
    result = ExtendResult(network=network, config=ExtendConfig(training=_training()),
                          old_classes=10, mode="lwf")
    summary = result.summary()
    assert (summary["old_classes"], summary["new_classes"], summary["class_names"]) == (
        [], [], [])


def test_load_extend_test_resizes_to_the_given_size(tmp_path):
    root = write_folder(tmp_path / "t", {"a": 1, "k": 1}, size=(16, 16))
    images, targets = load_extend_test(root, OLD + ("k",), size=SIZE)
    assert images.shape == (2, 3, SIZE, SIZE) and targets.tolist() == [0, 10]


def test_extend_leaves_no_hook_on_the_head():
    """The head-only loss's feature hook is removed after every epoch."""
    config = ExtendConfig(training=_training(epochs=2), head_ce_weight=0.5)
    result = extend(named(), _new(4), _replay(), config=config)
    assert len(result.network.module[-1]._forward_pre_hooks) == 0


def test_frozen_backbone_keeps_batchnorm_statistics():
    teacher = named()
    result = extend(teacher, _new(4), None,
                    config=ExtendConfig(training=_training(), backbone_lr_scale=0.0))
    bn, before = result.network.module[1], teacher.module[1]
    assert torch.equal(bn.running_mean, before.running_mean)
    assert bn.num_batches_tracked.item() == before.num_batches_tracked.item()


def test_training_accuracy_counts_every_batch(monkeypatch):
    """New class k's row is made to win everywhere: half the images (class k) are hits."""
    import invkit.extend as ext

    original = ext.widen

    def biased(teacher, names, head=None):
        network = original(teacher, names, head)
        with torch.no_grad():
            network.module[-1].bias[10] = 100.0
        return network

    monkeypatch.setattr(ext, "widen", biased)
    result = extend(named(), _new(10), None, config=ExtendConfig(
        training=_training(lr=1e-4), distill=False))
    assert result.history[0]["train_acc_new"] == 0.5
