"""invkit prune: the Taylor-KL importance, the MACs schedule, coupled channels, the
pruned checkpoint's round trip, the errors and the CLI (tiny networks, a few dozen images)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torch_pruning", reason="the optional prune extra (torch-pruning) "
                                            "is not installed")

from invkit.distill import DistillConfig  # noqa: E402
from invkit.errors import InvkitError  # noqa: E402
from invkit.prune import (  # noqa: E402
    PruneConfig, build_graph, check_data, count_macs, prunable_groups, prune,
    require_torch_pruning, save_pruned, taylor_group_scores, taylor_terms,
)
from invkit.specs import Teacher, TeacherMeta  # noqa: E402
from invkit.teachers import load_teacher  # noqa: E402
from invkit.teachers.digits import DigitsResNet, digits_dataset  # noqa: E402
from tests.tiny_classifier import random_uint8, tiny_teacher, write_imagefolder  # noqa: E402

QUICK = DistillConfig(epochs=1, batch_size=16, lr=0.01, flip=False, seed=0)


def _small_digits(seed: int = 0, widths=(4, 8, 8)) -> Teacher:
    """A small BatchNorm ResNet with the digits teacher's code (residual couplings)."""
    torch.manual_seed(seed)
    module = DigitsResNet(widths=widths).eval()
    meta = TeacherMeta(arch="digits", input_size=32, num_classes=10, mean=(0.3,) * 3,
                       std=(0.33,) * 3)
    return Teacher(module=module, meta=meta, name="small-digits")


def _digits_images(n: int):
    images, labels = digits_dataset("train")
    return images[:n], labels[:n]


def test_taylor_terms_are_the_per_image_taylor_term_of_the_sampled_kl():
    teacher = tiny_teacher(0)
    pruned = Teacher(module=tiny_teacher(0).module, meta=teacher.meta, name="copy")
    images, _ = random_uint8(6, seed=0)
    config = PruneConfig(amount=0.5, importance_samples=1, finetune=DistillConfig(temperature=2))
    bn = pruned.module[1]
    terms = taylor_terms(teacher, pruned, images, [pruned.module[7]], config,
                         torch.Generator().manual_seed(3))

    # By hand: the same sampled classes, then d(-log p(y))/d(bn output) * bn output.
    x01 = images.float() / 255
    with torch.no_grad():
        probs = F.softmax(teacher.module(teacher.prepare(x01)) / 2, 1)
    sampled = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3))
    saved = {}
    hook = bn.register_forward_hook(lambda m, i, o: saved.setdefault("a", o))
    log_p = F.log_softmax(pruned.module(pruned.prepare(x01)) / 2, 1)
    hook.remove()
    (grad,) = torch.autograd.grad(-log_p.gather(1, sampled).sum(), saved["a"])
    expected = (grad * saved["a"]).sum((2, 3))
    assert terms["1"].shape == (6, 8)
    assert torch.allclose(terms["1"], expected, atol=1e-6)
    # The pitfall it avoids: the KL's own gradient is zero while the networks agree...
    logits = pruned.module(pruned.prepare(x01))
    kl = F.kl_div(F.log_softmax(logits / 2, 1), F.log_softmax(logits.detach() / 2, 1),
                  reduction="sum", log_target=True)
    (kl_grad,) = torch.autograd.grad(kl, logits)
    assert kl_grad.abs().max().item() < 1e-6
    # ...but the sampled estimate is not, in every channel.
    graph = build_graph(pruned)
    groups = prunable_groups(graph, [pruned.module[7]])
    names = {m: n for n, m in pruned.module.named_modules()}
    scores = taylor_group_scores(graph, groups["0"], terms, names)
    assert torch.allclose(scores, expected.pow(2).mean(0), atol=1e-6)  # the BN stands for it
    assert (scores > 0).all()


def test_residual_terms_add_up_before_squaring():
    teacher = _small_digits()
    images, _ = _digits_images(8)
    config = PruneConfig(amount=0.5, importance_samples=1)
    terms = taylor_terms(teacher, teacher, images, [teacher.module.fc], config,
                         torch.Generator().manual_seed(0))
    graph = build_graph(teacher)
    groups = prunable_groups(graph, [teacher.module.fc])
    names = {m: n for n, m in teacher.module.named_modules()}
    residual = next(g for n, g in groups.items() if n.startswith("layers.2.downsample"))
    scores = taylor_group_scores(graph, residual, terms, names)
    summed = terms["layers.2.bn2"] + terms["layers.2.downsample.1"]
    assert torch.allclose(scores, summed.pow(2).mean(0), atol=1e-7)


def test_magnitude_removes_the_weakest_channel_and_keeps_the_rest_exactly():
    teacher = tiny_teacher(0)
    conv, bn, conv2 = teacher.module[0], teacher.module[1], teacher.module[3]
    with torch.no_grad():
        conv.weight[5].mul_(1e-3)
        bn.weight[5] = 1e-3
        conv2.weight[:, 5].mul_(1e-3)
        bn.running_var.fill_(1.0)
    before = conv.weight.detach().clone()
    images, targets = random_uint8(16, seed=1)
    config = PruneConfig(amount=1 / 8, importance="magnitude", steps=1, finetune_epochs=0)
    result = prune(teacher, images, targets, config=config)
    pruned_conv = result.pruned.module[0]
    assert pruned_conv.out_channels == 7 and result.pruned.module[3].out_channels == 7
    kept = [i for i in range(8) if i != 5]
    assert torch.equal(pruned_conv.weight, before[kept])
    assert conv.out_channels == 8  # the teacher itself is untouched


def test_target_macs_is_reached_in_steps_and_the_checkpoint_loads_back(tmp_path):
    teacher = _small_digits(widths=(8, 16, 16))
    images, targets = _digits_images(32)
    test = _digits_images(20)
    config = PruneConfig(target_macs=0.5, steps=2, step_epochs=1, finetune_epochs=1,
                         finetune=QUICK)
    result = prune(teacher, images, targets, config=config, test=test)
    assert result.macs_after <= 0.5 * result.macs_before
    assert result.macs_after > 0.4 * result.macs_before
    assert [s["step"] for s in result.steps] == [1, 2]
    assert result.steps[0]["macs"] > result.steps[1]["macs"]
    assert (result.macs_after, result.params_after) == count_macs(
        result.pruned.module, torch.zeros(1, 3, 32, 32))
    assert set(result.accuracy) == {"before", "pruned", "finetuned"}
    assert len(result.finetune_history) == 1
    # Residual couplings kept consistent: a block's two branches have the same width.
    block = result.pruned.module.layers[1]
    assert block.conv2.out_channels == block.downsample[0].out_channels < 16
    assert result.structure["layers.1.bn2"]["out"] == block.conv2.out_channels

    path = save_pruned(result, tmp_path, extra={"teacher": "small"})
    record = json.loads((tmp_path / "prune.json").read_text())
    assert record["macs"]["after"] == result.macs_after
    assert record["params"]["before"] == result.params_before
    assert record["teacher"] == "small" and record["config"]["target_macs"] == 0.5
    loaded = load_teacher(f"checkpoint:{path}")
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), result.pruned.module(x))
    assert loaded.meta.arch == "digits" and loaded.module.fc.in_features < 16


def test_amount_removes_that_fraction_of_every_group():
    teacher = _small_digits(widths=(8, 8, 16))
    for p in teacher.module.parameters():
        p.requires_grad_(False)  # as distill() leaves a teacher: still traceable
    images, _ = _digits_images(16)
    result = prune(teacher, images, config=PruneConfig(amount=0.5, steps=1, finetune_epochs=0))
    module = result.pruned.module
    assert (module.conv1.out_channels, module.layers[0].conv1.out_channels,
            module.layers[2].conv2.out_channels) == (4, 4, 8)
    assert module.fc.out_features == 10  # the classes are never pruned
    assert not any(p.requires_grad for p in teacher.module.parameters())


def test_unreachable_target_and_bad_data_are_one_line_errors():
    teacher = _small_digits()
    images, targets = _digits_images(8)
    with pytest.raises(InvkitError, match="--target-macs 0.001 cannot be reached"):
        prune(teacher, images, config=PruneConfig(target_macs=0.001))
    with pytest.raises(InvkitError, match="images are 8x8 but teacher 'small-digits' takes 32x32"):
        check_data(teacher, torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None)
    with pytest.raises(InvkitError, match="class index 12 but teacher 'small-digits' has 10"):
        check_data(teacher, images, torch.tensor([0, 12]))
    with pytest.raises(InvkitError, match="exactly one of --target-macs"):
        PruneConfig(target_macs=0.5, amount=0.3)
    with pytest.raises(InvkitError, match="must be between 0 and 1"):
        PruneConfig(target_macs=1.5)


class _Untraceable(nn.Module):
    """Goes through numpy in the middle: no autograd graph for the pruner to follow."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        return self.fc(torch.from_numpy(y.detach().numpy()))


def test_a_network_the_pruner_cannot_follow_is_a_clear_error():
    meta = TeacherMeta(arch="odd", input_size=8, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3)
    teacher = Teacher(module=_Untraceable().eval(), meta=meta, name="odd")
    with pytest.raises(InvkitError, match="no prunable channels|cannot trace"):
        prune(teacher, random_uint8(4, seed=0)[0], config=PruneConfig(amount=0.5))


def test_missing_torch_pruning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(InvkitError, match=r"pip install 'invkit\[prune\]'"):
        require_torch_pruning()


def test_cli_prune_digits_end_to_end(invoke, tmp_path):
    images, labels = _digits_images(30)
    write_imagefolder(tmp_path / "data", (images * 255).round().to(torch.uint8), labels)
    out = tmp_path / "out"
    args = ["prune", "--teacher", "digits", "--data", str(tmp_path / "data"),
            "--target-macs", "0.5", "--steps", "2", "--finetune-epochs", "1",
            "--test-data", "digits", "-o", str(out), "--quiet"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "prune.json").read_text())
    assert record["macs"]["ratio"] <= 0.5 and record["params"]["after"] < record["params"]["before"]
    assert set(record["accuracy"]) == {"before", "pruned", "finetuned"}
    assert record["accuracy"]["before"] == pytest.approx(0.9978, abs=1e-4)
    assert record["images"] == 30 and "checkpoint:" in result.output
    spec = f"checkpoint:{out / 'pruned.safetensors'}"
    pruned = load_teacher(spec)
    width = pruned.module.conv1.out_channels
    assert width < 16

    # The pruned network as a verifier, and as a student that starts from its weights.
    assert invoke("eval", str(tmp_path / "data"), "--verifier-arch", spec, "-q").exit_code == 0
    student = invoke("distill", "--teacher", "digits", "--student", spec, "--data",
                     str(tmp_path / "data"), "--epochs", "1", "-o", str(tmp_path / "s"), "-q")
    assert student.exit_code == 0, student.output
    again_student = load_teacher(f"checkpoint:{tmp_path / 's' / 'student.safetensors'}")
    assert again_student.module.conv1.out_channels == width

    again = invoke(*args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert again.output.strip().count("\n") == 0


@pytest.mark.parametrize("extra, message", [
    (["--target-macs", "0.5", "--amount", "0.3"], "exactly one of --target-macs"),
    (["--target-macs", "0.001"], "cannot be reached"),
    (["--amount", "0.3", "--data", "{tmp}/empty"], "holds no images"),
])
def test_cli_errors_are_one_line_exit_2(invoke, tmp_path, extra, message):
    images, labels = _digits_images(4)
    write_imagefolder(tmp_path / "data", (images * 255).round().to(torch.uint8), labels)
    (tmp_path / "empty" / "0").mkdir(parents=True)
    result = invoke("prune", "--teacher", "digits", "--data", str(tmp_path / "data"),
                    *[a.format(tmp=tmp_path) for a in extra], "-o", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and message in result.output
    assert not (tmp_path / "o").exists()  # nothing written before the input is checked
