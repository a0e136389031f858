"""invkit.prune pinned exactly: every PruneConfig refusal, the MACs arithmetic (count,
per-layer estimate, schedule, bisection), which layers are protected or prunable, the
channels removed, the Taylor-KL bookkeeping, the saved record, the data checks, and what
prune() passes to distillation and reports (tiny networks; distill is recorded, not run)."""

from __future__ import annotations

import dataclasses
import json
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

tp = pytest.importorskip("torch_pruning", reason="the optional prune extra (torch-pruning) "
                                                 "is not installed")

from invkit import prune as prune_module  # noqa: E402
from invkit.distill import DistillConfig  # noqa: E402
from invkit.errors import InvkitError  # noqa: E402
from invkit.prune import (  # noqa: E402
    PruneConfig, PruneResult, _bisect, _keep_counts, _macs_with, _step_line, build_graph,
    check_data, count_macs, group_scores, macs_model, output_layers, plan_schedule,
    prunable_groups, prune, remove_channels, require_torch_pruning, save_pruned, taylor_terms,
)
from invkit.specs import Teacher, TeacherMeta  # noqa: E402
from tests.expect import invkit_error  # noqa: E402
from tests.tiny_classifier import random_uint8, tiny_teacher  # noqa: E402

X8 = torch.zeros(1, 3, 8, 8)


def _teacher(module: nn.Module, name: str = "net", size: int = 8) -> Teacher:
    meta = TeacherMeta(arch="net", input_size=size, num_classes=10, mean=(0.5,) * 3,
                       std=(0.25,) * 3)
    return Teacher(module=module.eval(), meta=meta, name=name)


def _net(widths=(8, 8), seed=0) -> nn.Sequential:
    """tiny_net's layout at the given widths (conv-BN-ReLU, strided conv-ReLU, pool, fc)."""
    a, b = widths
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(),
            nn.Conv2d(a, b, 3, padding=1, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(b, 10),
        ).eval()


class _Progress:
    """Records every call a ProgressDisplay gets."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, *args))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give exactly one of --target-macs (fraction of MACs to keep) and --amount "
         "(fraction of channels to remove)"),
    ({"target_macs": 0.5, "amount": 0.3}, "give exactly one of --target-macs (fraction of "
     "MACs to keep) and --amount (fraction of channels to remove)"),
    ({"target_macs": 0.0}, "--target-macs 0.0 must be between 0 and 1 (the fraction of the "
     "teacher's MACs to keep, e.g. 0.5)"),
    ({"target_macs": 1}, "--target-macs 1 must be between 0 and 1 (the fraction of the "
     "teacher's MACs to keep, e.g. 0.5)"),
    ({"amount": 0}, "--amount 0 must be between 0 and 1 (the fraction of channels to "
     "remove, e.g. 0.3)"),
    ({"amount": 1.0}, "--amount 1.0 must be between 0 and 1 (the fraction of channels to "
     "remove, e.g. 0.3)"),
    ({"amount": 0.5, "importance": "Magnitude"}, "unknown importance 'Magnitude' (valid: "
     "taylor-kl, magnitude)"),
    ({"amount": 0.5, "steps": 0}, "steps=0 must be at least 1, step_epochs=1 and "
     "finetune_epochs=20 0 or more"),
    ({"amount": 0.5, "step_epochs": -1}, "steps=4 must be at least 1, step_epochs=-1 and "
     "finetune_epochs=20 0 or more"),
    ({"amount": 0.5, "finetune_epochs": -1}, "steps=4 must be at least 1, step_epochs=1 and "
     "finetune_epochs=-1 0 or more"),
    ({"amount": 0.5, "max_layer_amount": 0}, "max_layer_amount=0 must be in (0, 1)"),
    ({"amount": 0.5, "max_layer_amount": 1}, "max_layer_amount=1 must be in (0, 1)"),
    ({"amount": 0.5, "importance_samples": 0}, "importance_samples and importance_batch_size "
     "must be at least 1"),
    ({"amount": 0.5, "importance_batch_size": 0}, "importance_samples and "
     "importance_batch_size must be at least 1"),
])
def test_each_config_refusal_is_exact(kwargs, message):
    assert invkit_error(lambda: PruneConfig(**kwargs)) == message


def test_the_limits_of_the_config_are_accepted():
    for kwargs in [{"target_macs": 0.999}, {"target_macs": 1e-3}, {"amount": 0.999},
                   {"amount": 1e-3, "importance": "magnitude"},
                   {"amount": 0.5, "steps": 1, "step_epochs": 0, "finetune_epochs": 0},
                   {"amount": 0.5, "max_layer_amount": 0.999, "importance_samples": 1,
                    "importance_batch_size": 1}]:
        PruneConfig(**kwargs)


def test_require_torch_pruning(monkeypatch):
    assert require_torch_pruning() is tp
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    assert invkit_error(require_torch_pruning) == (
        "pruning needs the torch-pruning package: pip install 'invkit[prune]'")


def test_the_summary_record_is_exact():
    config = PruneConfig(amount=0.25, steps=2)
    result = PruneResult(pruned=tiny_teacher(0, arch="tiny-x"), config=config, macs_before=200,
                         macs_after=50, params_before=40, params_after=30,
                         structure={"0": {"out": 4}}, accuracy={"before": 0.5},
                         steps=[{"step": 1}], finetune_history=[{"epoch": 1}],
                         seconds=1.23456)
    assert result.summary() == {
        "pruned": "tiny-x", "arch": "tiny-x", "config": dataclasses.asdict(config),
        "macs": {"before": 200, "after": 50, "ratio": 0.25},
        "params": {"before": 40, "after": 30, "ratio": 0.75},
        "accuracy": {"before": 0.5}, "steps": [{"step": 1}],
        "finetune_epochs": [{"epoch": 1}], "structure": {"0": {"out": 4}}, "seconds": 1.23,
    }
    assert result.summary()["config"]["amount"] == 0.25
    fresh = PruneResult(pruned=result.pruned, config=config, macs_before=1, macs_after=1,
                        params_before=1, params_after=1, structure={})
    assert (fresh.accuracy, fresh.steps, fresh.finetune_history, fresh.seconds) == ({}, [], [],
                                                                                   0.0)


# --------------------------------------------------------------------------- graph


def test_count_macs_is_the_hand_count_and_keeps_the_mode():
    net = _net()
    conv1, bn, conv2, fc = 3 * 8 * 9 * 64 + 8 * 64, 2 * 8 * 64, 8 * 8 * 9 * 16 + 8 * 16, 90
    relus_pool = 8 * 64 + 8 * 16 + 8 * 16
    params = (3 * 8 * 9 + 8) + 16 + (8 * 8 * 9 + 8) + (80 + 10)
    net.train()
    assert count_macs(net, X8) == (conv1 + bn + conv2 + fc + relus_pool, params)
    assert net.training and all(m.training for m in net.modules())
    net.eval()
    assert count_macs(net, X8) == (25562, 914) and not net.training
    assert all(type(v) is int for v in count_macs(net, X8))


def test_output_layers_follow_the_output_and_fall_back_to_the_last_layer():
    net = _net()
    assert output_layers(net, X8) == [net[7]]
    assert all(not m._forward_hooks for m in net.modules())  # the hooks are removed

    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 10)
            self.aux = nn.Linear(4, 2)  # registered last, never the output

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)))

    net = HeadFirst()
    assert output_layers(net, X8) == [net.head]
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 10, 1), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten())
    assert output_layers(pooled, X8) == [pooled[1]]

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 10)

        def forward(self, x):
            return (self.fc(x.mean((2, 3))), 1)

    pair = Pair()
    assert output_layers(pair, X8) == [pair.fc]


class _Freed(nn.Module):
    """Frees its first conv's output before making its own: the id may be reused."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 4, 1)
        self.last = nn.Conv2d(4, 10, 1)

    def forward(self, x):
        a = self.first(x)
        b = self.last(a)
        del a
        return b.mean((2, 3))


def test_a_freed_layer_output_is_never_taken_for_the_network_output():
    for _ in range(5):
        net = _Freed()
        assert output_layers(net, X8) == [net.last]


class _Raises(nn.Module):
    def __init__(self, error):
        super().__init__()
        self.fc = nn.Linear(3, 10)
        self.error = error

    def forward(self, x):
        if self.error is not None:
            raise self.error
        return self.fc(x.mean((2, 3)))


def test_build_graph_restores_frozen_weights_and_names_tracing_failures():
    net = _net()
    net[0].weight.requires_grad_(False)
    graph = build_graph(_teacher(net))
    assert graph.model is net
    assert not net[0].weight.requires_grad and net[0].bias.requires_grad
    other = _net(seed=1)
    assert build_graph(_teacher(net), other).model is other
    long = "bad   shape\n" + "y" * 200
    teacher = _teacher(_Raises(ValueError(long)), name="odd")
    for p in teacher.module.parameters():
        p.requires_grad_(False)
    text = " ".join(long.split())[:160]
    assert invkit_error(lambda: build_graph(teacher)) == (
        f"torch-pruning cannot trace teacher 'odd' to find its coupled channels "
        f"(ValueError: {text})")
    assert not any(p.requires_grad for p in teacher.module.parameters())
    mine = _teacher(_Raises(InvkitError("my own words")))
    assert invkit_error(lambda: build_graph(mine)) == "my own words"


def test_prunable_groups_skip_the_classifier_and_grouped_convs():
    net = _net()
    graph = build_graph(_teacher(net))
    groups = prunable_groups(graph, [net[7]])
    assert sorted(groups) == ["0", "3"]
    assert groups["0"][0].dep.target.module is net[0]
    assert sorted(prunable_groups(graph, [])) == ["0", "3", "7"]
    dw = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 6, 1),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))
    assert sorted(prunable_groups(build_graph(_teacher(dw)), [dw[5]])) == ["0", "2"]
    lone = _Raises(None)
    graph = build_graph(_teacher(lone))
    assert invkit_error(lambda: prunable_groups(graph, [lone.fc])) == (
        "the teacher has no prunable channels (no conv or linear layer besides the "
        "classifier that torch-pruning can shrink)")


def test_remove_channels_takes_exactly_the_selected_channels():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    graph = build_graph(_teacher(net))
    remove_channels(graph, {"0": [5, 1], "3": []})
    kept = [0, 2, 3, 4, 6, 7]
    assert (net[0].out_channels, net[1].num_features, net[3].in_channels) == (6, 6, 6)
    assert net[3].out_channels == 8
    assert torch.equal(net[0].weight, before["0.weight"][kept])
    assert torch.equal(net[1].running_var, before["1.running_var"][kept])
    assert torch.equal(net[3].weight, before["3.weight"][:, kept])
    remove_channels(graph, {"3": [0]})
    assert net[3].out_channels == 7 and net[7].in_features == 7
    assert torch.equal(net[7].weight, before["7.weight"][:, 1:])


# --------------------------------------------------------------------------- schedule


def test_keep_counts_round_the_fraction_and_respect_the_cap():
    original = {"a": 10, "b": 3, "c": 25, "d": 1}
    assert _keep_counts(original, 0.5, 0.9) == {"a": 5, "b": 2, "c": 12, "d": 1}
    assert _keep_counts(original, 0.95, 0.9) == {"a": 1, "b": 1, "c": 3, "d": 1}
    assert _keep_counts(original, 0.75, 0.75) == {"a": 3, "b": 1, "c": 7, "d": 1}
    assert _keep_counts({"a": 10, "c": 25}, 0.0, 0.5) == {"a": 10, "c": 25}
    assert _keep_counts({"a": 10, "c": 25}, 0.58, 0.6) == {"a": 4, "c": 11}
    assert _keep_counts({"z": 0}, 0.5, 0.9) == {"z": 1}


def test_macs_with_counts_the_network_cut_to_those_widths():
    teacher = _teacher(_net())
    assert _macs_with(teacher, ["7"], {"0": 4, "3": 6}) == count_macs(_net((4, 6)), X8)[0]
    assert _macs_with(teacher, ["7"], {"0": 8, "3": 8}) == 25562
    assert _macs_with(teacher, ["7"], {"0": 3}) == count_macs(_net((3, 8)), X8)[0]
    assert teacher.module[0].out_channels == 8  # counted on a copy


def test_the_macs_estimate_scales_each_layer_by_its_kept_fractions():
    teacher = _teacher(_net())
    graph = build_graph(teacher)
    groups = prunable_groups(graph, [teacher.module[7]])
    original = {"0": 8, "3": 8}
    estimate = macs_model(teacher, graph, groups, original)
    conv1, bn, relu1, conv2, relu2, pool, fc = 14336, 1024, 512, 9344, 128, 128, 90
    assert estimate(original) == 25562
    a, b = 4 / 8, 6 / 8
    assert estimate({"0": 4, "3": 6}) == pytest.approx(
        conv1 * a + bn * a + relu1 + conv2 * a * b + relu2 + pool + fc * b, rel=1e-12)


def test_a_depthwise_layer_scales_with_its_channels_once():
    dw = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 8, 3, groups=8, bias=False),
                       nn.Conv2d(8, 6, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(6, 10))
    teacher = _teacher(dw)
    graph = build_graph(teacher)
    groups = prunable_groups(graph, [dw[5]])
    original = {"0": 8, "2": 6}
    estimate = macs_model(teacher, graph, groups, original)
    full = estimate(original)
    half = estimate({"0": 4, "2": 6})
    # conv 0 (3->8, 64 px) and the depthwise conv (8 channels, 9 taps, 36 px) halve once,
    # the next conv's input halves: everything but the pool and the classifier halves.
    c0, c1, c2 = 3 * 8 * 64, 8 * 9 * 36, 8 * 6 * 36
    assert full - half == pytest.approx((c0 + c1 + c2) / 2)


def test_bisect_finds_the_smallest_fraction_reaching_the_goal():
    line = lambda f: 100 * (1 - f)  # noqa: E731
    assert _bisect(line, 50, 0.9) == pytest.approx(0.5, abs=1e-8)
    assert _bisect(line, 50, 0.9) >= 0.5
    assert _bisect(line, 100, 0.9) == pytest.approx(0.0, abs=1e-8)
    assert _bisect(line, 5, 0.9) == 0.9  # unreachable: the cap
    assert _bisect(line, 50, 0.8, rounds=1) == 0.8
    assert _bisect(line, 70, 0.8, rounds=1) == 0.4
    assert _bisect(line, 70, 0.8, rounds=2) == 0.4
    assert _bisect(line, 50, 0.8, rounds=2) == pytest.approx(0.6, abs=1e-12)
    step = lambda f: 50.0 if f >= 0.25 else 100.0  # noqa: E731 - the goal met exactly
    assert _bisect(step, 50, 0.8) == pytest.approx(0.25, abs=1e-8)


def test_amount_schedules_equal_steps_of_channels():
    teacher = _teacher(_net())
    config = PruneConfig(amount=0.5, steps=2)
    assert plan_schedule(teacher, config, ["7"], {"conv1": 16}, None, None) == [
        {"conv1": 12}, {"conv1": 8}]
    config = PruneConfig(amount=0.9, steps=3, max_layer_amount=0.5)
    assert plan_schedule(teacher, config, ["7"], {"a": 20, "b": 7}, None, None) == [
        {"a": 14, "b": 5}, {"a": 10, "b": 4}, {"a": 10, "b": 4}]


def _schedule_parts():
    teacher = _teacher(_net())
    graph = build_graph(teacher)
    groups = prunable_groups(graph, [teacher.module[7]])
    original = {"0": 8, "3": 8}
    return teacher, original, macs_model(teacher, graph, groups, original)


def test_target_macs_schedules_equal_steps_of_macs():
    teacher, original, estimate = _schedule_parts()
    plan = plan_schedule(teacher, PruneConfig(target_macs=0.5, steps=2), ["7"], original,
                         25562, estimate)
    assert plan == [{"0": 6, "3": 6}, {"0": 4, "3": 4}]
    plan = plan_schedule(teacher, PruneConfig(target_macs=0.3, steps=3), ["7"], original,
                         25562, estimate)
    assert plan == [{"0": 6, "3": 6}, {"0": 4, "3": 4}, {"0": 2, "3": 2}]
    plan = plan_schedule(teacher, PruneConfig(target_macs=0.6, steps=1), ["7"], original,
                         25562, estimate)
    assert plan == [{"0": 5, "3": 5}]
    assert _macs_with(teacher, ["7"], plan[0]) <= 0.6 * 25562
    assert _macs_with(teacher, ["7"], {"0": 6, "3": 6}) > 0.6 * 25562


def test_the_last_step_is_checked_with_a_real_count():
    teacher = _teacher(_net((100, 100)))
    graph = build_graph(teacher)
    original = {"0": 100, "3": 100}
    estimate = macs_model(teacher, graph, prunable_groups(graph, [teacher.module[7]]), original)
    optimistic = lambda keep: 0.92 * estimate(keep)  # noqa: E731 - underestimates
    before = count_macs(teacher.module, X8)[0]
    plan = plan_schedule(teacher, PruneConfig(target_macs=0.5, steps=2), ["7"], original,
                         before, optimistic)
    # Each step's goal is an equal share of the MACs removed; the last one is then raised
    # in 1% steps until the real count reaches the target.
    first = _bisect(lambda f: optimistic(_keep_counts(original, f, 0.9)), before * 0.75, 0.9)
    fraction = _bisect(lambda f: optimistic(_keep_counts(original, f, 0.9)), before * 0.5, 0.9)
    raised = 0
    while _macs_with(teacher, ["7"], _keep_counts(original, fraction, 0.9)) > 0.5 * before:
        fraction += 0.01
        raised += 1
    assert raised == 3  # odd: a 2% step would overshoot by one channel
    assert plan == [_keep_counts(original, first, 0.9), _keep_counts(original, fraction, 0.9)]


def test_the_last_step_stops_at_the_cap():
    teacher, original, _ = _schedule_parts()
    floor = _macs_with(teacher, ["7"], _keep_counts(original, 0.3, 0.3))
    target = floor / 25562
    plan = plan_schedule(teacher, PruneConfig(target_macs=target, steps=1,
                                              max_layer_amount=0.3), ["7"], original, 25562,
                         lambda keep: 0.0)
    assert plan == [_keep_counts(original, 0.3, 0.3)] == [{"0": 6, "3": 6}]


def test_an_unreachable_target_names_the_floor():
    teacher, original, estimate = _schedule_parts()
    floor = _macs_with(teacher, ["7"], {"0": 1, "3": 1})
    assert invkit_error(lambda: plan_schedule(teacher, PruneConfig(target_macs=0.01), ["7"],
                                          original, 25562, estimate)) == (
        f"--target-macs 0.01 cannot be reached: removing 90% of every prunable layer's "
        f"channels still leaves {100 * floor / 25562:.1f}% of the MACs (the classifier and "
        "unprunable layers); choose a larger target")
    assert f"{100 * floor / 25562:.1f}" == "8.6"
    # At exactly the floor it is reachable.
    plan_schedule(teacher, PruneConfig(target_macs=floor / 25562, steps=1), ["7"], original,
                  25562, estimate)


def test_a_depthwise_group_is_rooted_at_the_conv_producing_its_channels():
    """MobileNet-style expand/depthwise pairs: torch-pruning may root their group at the
    depthwise conv; the group is re-rooted at the expansion conv, so both are pruned."""
    dw = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8),
                       nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(6, 10)).eval()
    before = {k: v.clone() for k, v in dw.state_dict().items()}
    graph = build_graph(_teacher(dw))
    groups = prunable_groups(graph, [dw[6]])
    assert sorted(groups) == ["0", "3"]
    assert groups["0"][0].dep.target.module is dw[0]
    remove_channels(graph, {"0": [2, 6]})
    kept = [0, 1, 3, 4, 5, 7]
    assert (dw[0].out_channels, dw[1].num_features, dw[2].in_channels, dw[2].out_channels,
            dw[2].groups, dw[3].in_channels) == (6, 6, 6, 6, 6, 6)
    assert torch.equal(dw[2].weight, before["2.weight"][kept])
    assert torch.equal(dw[3].weight, before["3.weight"][:, kept])
    assert dw(torch.zeros(2, 3, 8, 8)).shape == (2, 10)
    # A grouped conv fed by the image itself has no producer to follow: not prunable.
    first = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.Conv2d(6, 4, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    assert sorted(prunable_groups(build_graph(_teacher(first)), [first[4]])) == ["1"]


# --------------------------------------------------------------------------- importance


def test_taylor_terms_shapes_batches_samples_and_progress():
    teacher = tiny_teacher(0)
    images, _ = random_uint8(5, seed=4)
    config = PruneConfig(amount=0.5, importance_samples=2, importance_batch_size=2)
    progress = _Progress()
    terms = taylor_terms(teacher, teacher, images, [teacher.module[7]], config,
                         torch.Generator().manual_seed(0), progress)
    assert sorted(terms) == ["0", "1", "3"]  # conv, BN, conv; the classifier is ignored
    assert {n: tuple(t.shape) for n, t in terms.items()} == {n: (10, 8) for n in terms}
    assert all(t.dtype == torch.float32 for t in terms.values())
    assert progress.calls == [("start_task", "taylor-kl importance of tiny-kd", 6)] + [
        ("advance",)] * 6
    assert all(not m._forward_hooks for m in teacher.module.modules())
    # Each batch is its own sample: the first two rows by hand, at the default temperature.
    x01 = images[:2].float() / 255
    with torch.no_grad():
        probs = torch.softmax(teacher.module(teacher.prepare(x01)) / 4, 1)
    sampled = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0))
    saved = {}
    hook = teacher.module[3].register_forward_hook(lambda m, i, o: saved.setdefault("a", o))
    log_p = torch.log_softmax(teacher.module(teacher.prepare(x01)) / 4, 1)
    hook.remove()
    (grad,) = torch.autograd.grad(-log_p.gather(1, sampled).sum(), saved["a"])
    assert torch.allclose(terms["3"][:2], (grad * saved["a"]).sum((2, 3)), atol=1e-6)


def test_taylor_terms_of_a_linear_layer_are_per_feature():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5), nn.ReLU(),
                        nn.Linear(5, 10)).eval()
    teacher = _teacher(net)
    images, _ = random_uint8(3, seed=2)
    config = PruneConfig(amount=0.5, importance_samples=1,
                         finetune=DistillConfig(temperature=1))
    pruned = _teacher(_Copy(net), name="copy")
    terms = taylor_terms(teacher, pruned, images, [pruned.module.net[3]], config,
                         torch.Generator().manual_seed(1))
    assert sorted(terms) == ["net.1"] and terms["net.1"].shape == (3, 5)
    x01 = images.float() / 255
    with torch.no_grad():
        probs = torch.softmax(net(teacher.prepare(x01)), 1)
    sampled = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(1))
    hidden = net[1](net[0](teacher.prepare(x01)))
    log_p = torch.log_softmax(net[3](net[2](hidden)), 1)
    (grad,) = torch.autograd.grad(-log_p.gather(1, sampled).sum(), hidden)
    assert torch.allclose(terms["net.1"], grad * hidden, atol=1e-6)


class _Copy(nn.Module):
    """Another module sharing ``net``'s layers (the pruned network's own names)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def test_group_scores_by_conv_output_without_a_norm_and_by_magnitude():
    teacher = tiny_teacher(0)
    bn = teacher.module[1]
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():  # not an identity, so the BN and conv terms differ
        bn.running_mean.copy_(torch.rand(8, generator=gen))
        bn.running_var.copy_(torch.rand(8, generator=gen) + 0.5)
        bn.weight.copy_(torch.rand(8, generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(8, generator=gen) - 0.5)
    images, _ = random_uint8(4, seed=5)
    config = PruneConfig(amount=0.5, importance_samples=1)
    terms = taylor_terms(teacher, teacher, images, [teacher.module[7]], config,
                         torch.Generator().manual_seed(2))
    graph = build_graph(teacher)
    groups = prunable_groups(graph, [teacher.module[7]])
    scores = group_scores(graph, groups, config, terms)
    assert sorted(scores) == ["0", "3"]
    assert torch.allclose(scores["3"], terms["3"].pow(2).mean(0), atol=1e-7)
    assert torch.allclose(scores["0"], terms["1"].pow(2).mean(0), atol=1e-7)
    assert not torch.allclose(scores["0"], terms["0"].pow(2).mean(0), rtol=1e-2)
    magnitude = group_scores(graph, groups, PruneConfig(amount=0.5, importance="magnitude"),
                             None)
    reference = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean",
                                                       normalizer=None)
    for name, group in groups.items():
        assert torch.equal(magnitude[name], reference(group).detach())
        assert not magnitude[name].requires_grad
    # Unnormalised: the sum of squares of each channel's weights (biases aside), averaged
    # over the layers of the group.
    net = teacher.module
    by_hand = (net[3].weight.detach().pow(2).sum((1, 2, 3))
               + net[7].weight.detach().pow(2).sum(0)) / 2
    assert torch.allclose(magnitude["3"], by_hand, rtol=1e-5)


# --------------------------------------------------------------------------- structure


def test_save_pruned_writes_the_weights_with_their_shapes_and_the_exact_record(tmp_path):
    from safetensors import safe_open

    from invkit.teachers.checkpoint import PRUNED_KEY

    pruned = _teacher(_net((4, 6)), name="tiny-pruned")
    structure = prune_module.pruned_structure(_net(), pruned.module)
    assert sorted(structure) == ["0", "1", "3", "7"]
    assert structure["0"] == {"type": "Conv2d", "in": 3, "out": 4, "groups": 1}
    assert structure["7"] == {"type": "Linear", "in": 6, "out": 10}
    result = PruneResult(pruned=pruned, config=PruneConfig(amount=0.5), macs_before=100,
                         macs_after=40, params_before=10, params_after=5, structure=structure,
                         seconds=2.0)
    path = save_pruned(result, tmp_path / "out", extra={"teacher": "tiny", "images": 6})
    assert path == tmp_path / "out" / "pruned.safetensors"
    text = (tmp_path / "out" / "prune.json").read_text()
    expected = {**result.summary(), "weights": str(path), "teacher": "tiny", "images": 6}
    assert json.loads(text) == json.loads(json.dumps(expected))
    assert list(json.loads(text)) == list(expected)
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()[PRUNED_KEY]) == structure
        assert torch.equal(f.get_tensor("0.weight"), pruned.module[0].weight)
    again = save_pruned(result, str(tmp_path / "plain"))
    assert json.loads((tmp_path / "plain" / "prune.json").read_text())["weights"] == str(again)
    assert "teacher" not in json.loads((tmp_path / "plain" / "prune.json").read_text())


# --------------------------------------------------------------------------- data


def test_check_data_refusals_are_exact():
    teacher = tiny_teacher(0)
    ok = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    check_data(teacher, ok, torch.tensor([0, 9]))  # the last class is a class
    check_data(teacher, ok, torch.tensor([], dtype=torch.long))
    check_data(teacher, ok, None)
    assert invkit_error(lambda: check_data(teacher, ok[0], None)) == "--data holds no images"
    assert invkit_error(lambda: check_data(teacher, ok[:0], None, what="--test-data")) == (
        "--test-data holds no images")
    assert invkit_error(lambda: check_data(teacher, torch.zeros(1, 3, 6, 7), None)) == (
        "--data images are 7x6 but teacher 'tiny-kd' takes 8x8: generate them with this "
        "teacher")
    assert invkit_error(lambda: check_data(teacher, torch.zeros(1, 3, 8, 7), None, "x")) == (
        "x images are 7x8 but teacher 'tiny-kd' takes 8x8: generate them with this teacher")
    assert invkit_error(lambda: check_data(teacher, ok, torch.tensor([3, 10, 2]))) == (
        "--data has class index 10 but teacher 'tiny-kd' has 10 classes: were the images "
        "generated from another teacher?")


# --------------------------------------------------------------------------- pruning


def test_step_lines():
    assert _step_line({"step": 2, "macs": 250, "params": 77}, 1000) == (
        "step 2: 25.0% of the MACs, 77 parameters")
    assert _step_line({"step": 1, "macs": 1, "params": 5, "test_acc": 0.98765}, 3) == (
        "step 1: 33.3% of the MACs, 5 parameters, test accuracy 98.77%")


@pytest.fixture
def recorded(monkeypatch):
    """distill and accuracy_on replaced by recorders (distill returns a fixed history)."""
    calls = SimpleNamespace(distill=[], accuracy=[])

    def fake_distill(teacher, student, images, targets, **kwargs):
        calls.distill.append((teacher, student, images, targets, kwargs))
        student.module.train()  # as distill leaves it
        return SimpleNamespace(history=[{"loss": 9.0}, {"loss": 0.5 + len(calls.distill)}],
                               final_test_acc=0.75)

    def fake_accuracy(network, test):
        calls.accuracy.append((network.name, test))
        return 0.125 * len(calls.accuracy)

    monkeypatch.setattr(prune_module, "distill", fake_distill)
    monkeypatch.setattr(prune_module, "accuracy_on", fake_accuracy)
    return calls


def test_prune_passes_its_settings_to_distillation_and_reports_each_step(recorded):
    teacher = tiny_teacher(0)
    weights = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    images, targets = random_uint8(6, seed=3)
    test = random_uint8(4, seed=6)
    finetune = DistillConfig(flip=False, seed=7, temperature=2)
    config = PruneConfig(amount=0.5, importance="magnitude", steps=2, step_epochs=3,
                         finetune_epochs=5, finetune=finetune)
    progress = _Progress()
    result = prune(teacher, images, targets, config=config, test=test, progress=progress)
    pruned = result.pruned
    assert pruned.name == "tiny-kd-pruned" and pruned.meta is teacher.meta
    assert result.config is config
    assert [c[:4] for c in recorded.distill] == [(teacher, pruned, images, targets)] * 2
    assert recorded.distill[0][4] == {
        "progress": progress, "config": dataclasses.replace(finetune, epochs=3, seed=8)}
    assert recorded.distill[1][4] == {
        "test": test, "progress": progress, "config": dataclasses.replace(finetune, epochs=5)}
    assert recorded.accuracy == [("tiny-kd", test), ("tiny-kd-pruned", test)] + [
        ("tiny-kd-pruned", test)]
    assert result.accuracy == {"before": 0.125, "pruned": 0.375, "finetuned": 0.75}
    assert result.finetune_history == [{"loss": 9.0}, {"loss": 2.5}]
    macs1, params1 = count_macs(_net((6, 6)), X8)
    macs2, params2 = count_macs(_net((4, 4)), X8)
    assert result.steps == [
        {"macs": macs1, "params": params1, "channels": {"0": 6, "3": 6}, "step": 1,
         "distill_loss": 1.5, "test_acc": 0.25},
        {"macs": macs2, "params": params2, "channels": {"0": 4, "3": 4}, "step": 2,
         "test_acc": 0.375}]
    assert list(result.steps[0]) == ["macs", "params", "channels", "step", "distill_loss",
                                     "test_acc"]
    assert (result.macs_before, result.params_before) == (25562, 914)
    assert (result.macs_after, result.params_after) == (macs2, params2)
    assert result.structure == prune_module.pruned_structure(_net(), pruned.module)
    assert sorted(result.structure) == ["0", "1", "3", "7"]
    assert progress.calls == [
        ("log", "pruning tiny-kd to 50% fewer channels (magnitude, 2 steps) on 6 images"),
        ("log", f"step 1: {100 * macs1 / 25562:.1f}% of the MACs, {params1} parameters, "
                "test accuracy 25.00%"),
        ("log", f"step 2: {100 * macs2 / 25562:.1f}% of the MACs, {params2} parameters, "
                "test accuracy 37.50%")]
    assert not pruned.module.training and all(p.requires_grad for p in pruned.module.parameters())
    assert 0 < result.seconds < 60
    assert teacher.module[0].out_channels == 8 and all(
        torch.equal(v, weights[k]) for k, v in teacher.module.state_dict().items())


def test_prune_without_test_data_or_fine_tuning(recorded):
    teacher = tiny_teacher(0)
    images, _ = random_uint8(6, seed=3)
    config = PruneConfig(target_macs=0.5, importance="magnitude", steps=2, step_epochs=0,
                         finetune_epochs=0)
    progress = _Progress()
    result = prune(teacher, images, config=config, progress=progress)
    assert recorded.distill == [] and recorded.accuracy == []
    assert result.accuracy == {} and result.finetune_history == []
    assert [s["channels"] for s in result.steps] == [{"0": 6, "3": 6}, {"0": 4, "3": 4}]
    assert [sorted(s) for s in result.steps] == [["channels", "macs", "params", "step"]] * 2
    assert progress.calls[0] == (
        "log", "pruning tiny-kd to 50% of its MACs (magnitude, 2 steps) on 6 images")
    assert [c[1].split(":")[0] for c in progress.calls[1:]] == ["step 1", "step 2"]
    assert result.macs_after <= 0.5 * result.macs_before
    quiet = prune(teacher, images, config=config)  # no progress display: the same network
    assert quiet.steps == result.steps


def test_prune_with_taylor_kl_reports_the_importance_pass(recorded):
    teacher = tiny_teacher(0)
    images, targets = random_uint8(6, seed=3)
    config = PruneConfig(amount=0.25, steps=1, finetune_epochs=0, importance_samples=1,
                         importance_batch_size=4, finetune=DistillConfig(seed=5))
    progress = _Progress()
    result = prune(teacher, images, targets, config=config, progress=progress)
    assert progress.calls[:4] == [
        ("log", "pruning tiny-kd to 25% fewer channels (taylor-kl, 1 steps) on 6 images"),
        ("start_task", "taylor-kl importance of tiny-kd-pruned", 2), ("advance",),
        ("advance",)]
    assert result.steps[0]["channels"] == {"0": 6, "3": 6}
    # The channels removed are the lowest Taylor-KL scores, with classes drawn from the
    # seed of the fine-tuning settings.
    terms = taylor_terms(teacher, _teacher(_net(), "copy"), images, [teacher.module[7]],
                         config, torch.Generator().manual_seed(5))
    lowest = torch.argsort(terms["1"].pow(2).mean(0), stable=True)[:2].tolist()
    kept = [i for i in range(8) if i not in lowest]
    assert torch.equal(result.pruned.module[0].weight, teacher.module[0].weight[kept])
