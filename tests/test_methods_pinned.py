"""The method API, value by value: option metadata, option merging, preset choice (every
rule and its boundary), ``finish`` against a hand computation, autocast and ``frozen``."""

from __future__ import annotations

import contextlib
import typing
from dataclasses import dataclass, field, fields

import pytest
import torch
from torch import nn

from invkit import methods
from invkit.errors import InvkitError
from invkit.methods import (
    Checkpoint, Context, Generation, MethodOption, choose_preset, finish, merge_options,
    method_options, option,
)
from invkit.specs import Preset, TeacherMeta
from tests.tiny_classifier import tiny_teacher


def test_option_metadata():
    """Every CLI detail lands in the field's metadata; empty choices mean none."""
    f = option(3, "help text", flags=["--a", "-a"], choices=[1, 2], min=0.5, max=9,
               metavar="N")
    assert f.default == 3
    assert dict(f.metadata) == {"help": "help text", "flags": ("--a", "-a"),
                                "choices": (1, 2), "min": 0.5, "max": 9, "metavar": "N"}
    g = option(choices=())
    assert g.default is None
    assert dict(g.metadata) == {"help": "", "flags": (), "choices": None, "min": None,
                                "max": None, "metavar": None}


@dataclass(frozen=True)
class Opts:
    a: int | None = option(None, "an int", flags=("--aa",), min=1, max=5, metavar="A",
                           choices=(1, 2))
    b: typing.Optional[float] = option(0.5, "b")  # noqa: UP007 - the typing spelling too
    c: int | str | None = None
    d: list[int] = field(default_factory=list)
    e: bool = option(False, "e")
    f: str = "x"


def test_method_options_reads_types_and_metadata():
    """``X | None`` and ``Optional[X]`` give X; other unions and generics give str;
    fields without metadata get the empty defaults."""
    got = method_options(Opts)
    assert got[0] == MethodOption("a", int, None, "an int", ("--aa",), (1, 2), 1, 5, "A")
    assert [(o.name, o.type) for o in got] == [
        ("a", int), ("b", float), ("c", str), ("d", str), ("e", bool), ("f", str)]
    assert got[2] == MethodOption("c", str, None)
    assert got[1].default == 0.5 and got[1].help == "b"
    assert method_options(None) == ()
    assert MethodOption("x", int, 1) == MethodOption("x", int, 1, "", (), None, None, None, None)


def test_base_type():
    assert methods._base_type(int) is int
    assert methods._base_type(int | None) is int
    assert methods._base_type(typing.Union[None, float]) is float  # noqa: UP007
    assert methods._base_type(int | float) is str
    assert methods._base_type("int") is str
    assert methods._base_type(list[int]) is str


def test_merge_options_layers():
    """None layers are skipped; a later layer's non-None fields win; none at all: None."""
    assert merge_options() is None
    assert merge_options(None, None) is None
    base = Opts(a=1, b=None, f="base")
    assert merge_options(base) is base
    assert merge_options(None, base, None) is base
    merged = merge_options(base, Opts(a=None, b=2.0, f="mid"), None, Opts(a=None, b=None, f="top"))
    assert merged == Opts(a=1, b=2.0, f="top")


SMALL = Preset("small", "s", teacher="t", max_input_size=64)
TINY = Preset("tiny", "t", teacher="t", max_input_size=32)
IMAGENET = Preset("imagenet", "i", teacher="t", families=("imagenet", "in21k"))
GENERAL = Preset("general", "g", teacher="t")
GENERAL2 = Preset("general2", "g", teacher="t")


def meta(size: int, family: str | None = None) -> TeacherMeta:
    return TeacherMeta("a", size, 10, family=family)


def test_choose_preset_by_name():
    """A named preset wins over every rule; an unknown name lists the valid ones."""
    assert choose_preset([GENERAL, SMALL], meta(8), "small") is SMALL
    assert choose_preset([GENERAL, SMALL], None, "general") is GENERAL
    with pytest.raises(InvkitError) as err:
        choose_preset([GENERAL, SMALL], None, "big")
    assert str(err.value) == "unknown preset 'big' (valid: general, small)"
    with pytest.raises(InvkitError) as err:
        choose_preset([], meta(8), "big")
    assert str(err.value) == "unknown preset 'big' (valid: none)"


def test_choose_preset_rules_in_order():
    """Family first, then the smallest size rule that admits the input (the limit
    included), then the first general preset, else the first preset."""
    assert choose_preset([], meta(8)) is None
    presets = [GENERAL, SMALL, TINY, IMAGENET, GENERAL2]
    assert choose_preset(presets, meta(8, "in21k")) is IMAGENET
    assert choose_preset(presets, meta(500, "imagenet")) is IMAGENET
    assert choose_preset(presets, meta(8, "cifar10")) is TINY
    assert choose_preset(presets, meta(32)) is TINY
    assert choose_preset(presets, meta(33)) is SMALL
    assert choose_preset(presets, meta(64)) is SMALL
    assert choose_preset(presets, meta(65)) is GENERAL
    assert choose_preset(presets, None) is GENERAL
    assert choose_preset([SMALL, TINY], meta(65)) is SMALL
    assert choose_preset([TINY, SMALL], None) is TINY
    assert choose_preset((IMAGENET, GENERAL), meta(8, "")) is GENERAL
    assert choose_preset((IMAGENET, GENERAL), meta(8, "digits")) is GENERAL
    assert choose_preset([IMAGENET, TINY], meta(33)) is IMAGENET
    assert choose_preset([IMAGENET], meta(8)) is IMAGENET


def test_a_family_preset_is_not_the_general_default():
    """Regression: pii and fast gave every teacher of another family their digits preset
    (200 steps, the digits verifier) instead of their "general" one."""
    from invkit.registry import registry

    methods_ = registry("method")
    for name, expected in (("pii", "general"), ("fast", "general"),
                           ("deepinversion", "imagenet")):
        presets = methods_.get(name).presets
        assert choose_preset(presets, meta(224, "imagenet")).name == expected
        assert choose_preset(presets, meta(224)).name == expected
        assert choose_preset(presets, meta(32, "digits")).name == "digits"


def test_context_and_checkpoint_defaults():
    """The defaults a method sees when a caller gives only the required fields."""
    m = meta(8)
    assert Context(m) == Context(m, "fp32", 100, 1, "cpu")
    c = Checkpoint(1, 2, 3, 4, 5, 6)
    assert (c.lr, c.losses, c.inputs, c.verifier_accuracy, c.description) == (
        0.0, None, None, None, "")
    g = Generation(1, 2, 3, {})
    assert (g.timings, g.its_per_s, g.teacher_pred, g.teacher_conf, g.verifier_pred) == (
        [], 0.0, None, None, None)
    assert methods.PRECISIONS == ("fp32", "fp16", "bf16")


def test_generation_accuracies():
    targets = torch.tensor([0, 1, 2, 3])
    g = Generation(None, None, targets, {}, teacher_pred=torch.tensor([0, 1, 0, 0]))
    assert g.teacher_accuracy == 0.5 and type(g.teacher_accuracy) is float
    assert g.verifier_accuracy is None
    g.verifier_pred = torch.tensor([0, 1, 2, 0])
    assert g.verifier_accuracy == 0.75 and type(g.verifier_accuracy) is float


class Verifier:
    def __init__(self):
        self.seen = []

    def predict(self, images01):
        self.seen.append(images01)
        return images01.mean((2, 3))  # "logits": the per-channel means


def test_finish_against_a_hand_computation():
    """images01 = clamp(x * std + mean) on the CPU in float32; predictions from the
    teacher's softmax; the verifier sees images01; its/s from iterations and timings."""
    teacher = tiny_teacher(seed=3)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 8, 8, 3, generator=g) * 3).permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    losses = {"total": 0.5}
    verifier = Verifier()
    out = finish(teacher, x, [1, 2], losses, verifier=verifier, timings=(1.5, 2.5),
                 iterations=10)
    expected01 = (x * 0.25 + 0.5).clamp(0, 1)
    assert out.images01.dtype == torch.float32 and out.images01.is_contiguous()
    assert torch.equal(out.images01, expected01)
    assert out.inputs.is_contiguous() and torch.equal(out.inputs, x)
    assert torch.equal(out.targets, torch.tensor([1, 2]))
    assert out.losses == losses and out.losses is not losses
    assert out.timings == [1.5, 2.5] and out.its_per_s == 2.5
    with torch.no_grad():
        probs = teacher.module(x).softmax(1)
    assert torch.equal(out.teacher_pred, probs.argmax(1))
    assert torch.allclose(out.teacher_conf, probs.max(1).values)
    assert len(verifier.seen) == 1 and verifier.seen[0] is out.images01
    assert torch.equal(out.verifier_pred, expected01.mean((2, 3)).argmax(1))


def test_finish_without_timings_or_verifier():
    """Zero elapsed time: 0 its/s (no division); no verifier: no verifier prediction."""
    teacher = tiny_teacher()
    out = finish(teacher, torch.zeros(1, 3, 8, 8), torch.tensor([4]), {}, iterations=7)
    assert out.its_per_s == 0.0 and out.timings == [] and out.verifier_pred is None
    out = finish(teacher, torch.zeros(1, 3, 8, 8), torch.tensor([4]), {}, iterations=7,
                 timings=[0.0])
    assert out.its_per_s == 0.0
    assert torch.equal(out.images01, torch.full((1, 3, 8, 8), 0.5))


def test_teacher_predictions_in_bf16():
    """Under bf16 autocast the logits are read back as float: prediction and confidence."""
    teacher = tiny_teacher(seed=1)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    pred, conf = methods.teacher_predictions(teacher, x, "bf16")
    assert conf.dtype == torch.float32 and pred.dtype == torch.int64
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = teacher.module(x)
    c, p = logits.float().softmax(1).max(1)
    assert torch.equal(pred, p) and torch.equal(conf, c)
    with pytest.raises(InvkitError):
        methods.teacher_predictions(teacher, x, "fp8")


def test_verifier_predictions_are_top1_classes():
    v = Verifier()
    images = torch.zeros(2, 3, 1, 1)
    images[0, 2], images[1, 1] = 1, 1
    assert torch.equal(methods.verifier_predictions(v, images), torch.tensor([2, 1]))


def test_module_device():
    """The first parameter's device (meta here), else the CPU."""
    assert methods.module_device(nn.ReLU()) == torch.device("cpu")
    assert methods.module_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")


def test_autocast_per_precision():
    """fp32: a no-op context; fp16/bf16: torch.autocast on the device's type; anything else
    refused with the list of precisions."""
    cpu = torch.device("cpu")
    assert isinstance(methods.autocast(cpu, "fp32"), contextlib.nullcontext)
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        ctx = methods.autocast(cpu, name)
        assert isinstance(ctx, torch.autocast)
        assert ctx.fast_dtype == dtype and ctx.device == "cpu"
    with pytest.raises(InvkitError) as err:
        methods.autocast(cpu, "FP32")
    assert str(err.value) == "precision 'FP32' is not one of: fp32, fp16, bf16"


def test_frozen_restores_mode_and_flags():
    """Inside: eval mode, no parameter needs gradients; after (even on an error): the
    module's own mode and per-parameter flags."""
    with methods.frozen(None) as nothing:
        assert nothing is None
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).train()
    net[1].weight.requires_grad_(False)
    before = [p.requires_grad for p in net.parameters()]
    assert before == [True, True, False, True]
    with methods.frozen(net) as inside:
        assert inside is net and not net.training and not net[0].training
        assert [p.requires_grad for p in net.parameters()] == [False] * 4
    assert net.training and [p.requires_grad for p in net.parameters()] == before
    net.eval()
    with pytest.raises(RuntimeError), methods.frozen(net):
        raise RuntimeError
    assert not net.training and [p.requires_grad for p in net.parameters()] == before


def test_public_names():
    """Everything ``__all__`` names exists (a misspelt name would break ``import *``)."""
    assert len(methods.__all__) == 16
    for name in methods.__all__:
        assert getattr(methods, name) is not None
    assert [f.name for f in fields(Generation)][:4] == ["inputs", "images01", "targets",
                                                         "losses"]
