"""invkit.teachers.torchvision_models, resnet50v15 and cifar pinned exactly: the BatchNorm
table, the metadata read from weights enums, weights names, the offline/download messages in
full, the safe reading of cached files, and every spec field."""

from __future__ import annotations

import functools
import socket
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from invkit.specs import TeacherMeta
from invkit.teachers import cifar, resnet50v15
from invkit.teachers import torchvision_models as tv
from tests.expect import invkit_error

SQUEEZE_FILE = "squeezenet1_1-b8a52dc0.pth"
SQUEEZE_URL = f"https://download.pytorch.org/models/{SQUEEZE_FILE}"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache; downloads refused unless a test replaces them."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("INVKIT_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize("name,expected", [
    ("vgg11_bn", True), ("vgg11", False), ("alexnet", False), ("squeezenet1_0", False),
    ("vit_b_16", False), ("swin_t", False), ("convnext_tiny", False), ("resnet18", True),
    ("resnext50_32x4d", True), ("wide_resnet50_2", True), ("densenet121", True),
    ("efficientnet_b0", True), ("googlenet", True), ("inception_v3", True),
    ("mnasnet0_5", True), ("mobilenet_v2", True), ("regnet_x_400mf", True),
    ("shufflenet_v2_x0_5", True), ("maxvit_t", True), ("newnet", None), ("xvgg11", None),
])
def test_batchnorm_table(name, expected):
    assert tv.batchnorm(name) is expected


def test_model_names_and_constants():
    assert tv.model_names() == tuple(torchvision.models.list_models(module=torchvision.models))
    assert tv.DOWNLOAD_TIMEOUT == 20.0
    assert [s.name for s in tv.teacher_specs()] == list(tv.model_names())


def test_describe_reads_the_default_weights():
    info = tv.describe("inception_v3")
    assert info["input_size"] == 299 and info["num_classes"] == 1000
    assert info["mean"] == IMAGENET_MEAN and info["std"] == IMAGENET_STD
    assert info["class_names"][:2] == ("tench", "goldfish") and len(info["class_names"]) == 1000
    assert tv.describe("efficientnet_v2_l")["mean"] == (0.5, 0.5, 0.5)
    assert tv.describe("efficientnet_v2_l")["std"] == (0.5, 0.5, 0.5)


def test_describe_weights_defaults_and_tuple_crops():
    def transforms():
        pass

    bare = SimpleNamespace(transforms=transforms, meta={})
    assert tv._describe_weights(bare) == {"input_size": 224, "num_classes": 1000,
                                          "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                          "class_names": None}
    given = SimpleNamespace(
        transforms=functools.partial(transforms, crop_size=[100, 120], mean=[0.1, 0.2, 0.3],
                                     std=(0.4, 0.5, 0.6)), meta={"categories": ["a", "b"]})
    assert tv._describe_weights(given) == {"input_size": 100, "num_classes": 2,
                                           "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6),
                                           "class_names": ("a", "b")}
    scalar = SimpleNamespace(transforms=functools.partial(transforms, crop_size=77),
                             meta={"categories": None})
    assert tv._describe_weights(scalar)["input_size"] == 77
    none_keywords = SimpleNamespace(transforms=SimpleNamespace(keywords=None), meta={})
    assert tv._describe_weights(none_keywords)["input_size"] == 224


def test_weights_names_and_resolution():
    enum = torchvision.models.SqueezeNet1_1_Weights
    assert tv.weights_enum("squeezenet1_1") is enum
    assert tv.weight_names("squeezenet1_1") == ["DEFAULT", "IMAGENET1K_V1"]
    for name in ("DEFAULT", "default", "IMAGENET1K_V1", "imagenet1k_v1",
                 "SqueezeNet1_1_Weights.IMAGENET1K_V1"):
        assert tv.resolve_weights("squeezenet1_1", name) is enum.IMAGENET1K_V1
    assert tv.resolve_weights("resnet50", "default") is \
        torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    for bad in ("ResNet18_Weights.IMAGENET1K_V1", "Nope.X", "V9"):
        assert invkit_error(tv.resolve_weights, "squeezenet1_1", bad) == (
            f"unknown weights {bad!r} for squeezenet1_1 (valid: none, DEFAULT, IMAGENET1K_V1, "
            "or a weights file)")


def test_cache_paths(hub):
    assert tv.cache_dir() == hub
    member = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    assert tv.cached_file(member) == hub / SQUEEZE_FILE
    assert tv.cached_file(SimpleNamespace(url="https://h/a/b/w-12.pth?dl=1&x=y")) == \
        hub / "w-12.pth"


@pytest.mark.parametrize("value,expected", [(None, False), ("", False), ("0", False),
                                            ("1", True), ("yes", True)])
def test_offline(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("INVKIT_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("INVKIT_OFFLINE", value)
    assert tv.offline() is expected


def _missing_message(hub, reason):
    return (f"weights SqueezeNet1_1_Weights.IMAGENET1K_V1 for squeezenet1_1 are not cached and "
            f"{reason}: put {SQUEEZE_FILE} (from {SQUEEZE_URL}) in {hub}, or pass --weights FILE "
            "(or --weights none for random init)")


def test_offline_missing_weights_message(hub):
    assert invkit_error(tv.build, "squeezenet1_1") == _missing_message(hub, "INVKIT_OFFLINE is set")


def _reference():
    gen = torch.Generator().manual_seed(3)
    net = torchvision.models.squeezenet1_1()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cached_weights_build_with_full_metadata(hub):
    reference = _reference()
    hub.mkdir(parents=True)
    torch.save(reference.state_dict(), hub / SQUEEZE_FILE)
    teacher = tv.build("squeezenet1_1", input_size=64)
    assert _same(teacher.module, reference) and not teacher.module.training
    info = tv.describe("squeezenet1_1")
    assert teacher.meta == TeacherMeta(
        arch="squeezenet1_1", input_size=64, num_classes=1000, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, class_names=info["class_names"],
        weights="SqueezeNet1_1_Weights.IMAGENET1K_V1", family="imagenet")
    assert teacher.name == "squeezenet1_1"
    assert tv.build("squeezenet1_1", weights="IMAGENET1K_V1").meta.input_size == 224


def test_random_init_metadata():
    teacher = tv.build("squeezenet1_1", weights="NONE")
    assert teacher.meta.weights == "none" and teacher.meta.input_size == 224
    assert teacher.meta.family == "imagenet" and teacher.meta.arch == "squeezenet1_1"
    assert teacher.module.classifier[1].out_channels == 1000 and not teacher.module.training
    vit = tv.build("vit_b_16", weights="none", input_size=32)
    assert vit.module.image_size == 32 and vit.meta.input_size == 32


def test_pretrained_vit_at_another_size_is_refused():
    assert invkit_error(tv.build, "vit_b_16", weights="DEFAULT", input_size=32) == (
        "vit_b_16 weights IMAGENET1K_V1 fit 224 px inputs only, not 32 px (use --weights none "
        "at 32 px)")


class Custom:
    """Needs full unpickling."""


def test_cached_file_is_read_safely_unless_trusted(hub):
    reference = _reference()
    hub.mkdir(parents=True)
    path = hub / SQUEEZE_FILE
    torch.save({"state_dict": reference.state_dict(), "x": Custom()}, path)
    assert invkit_error(tv.build, "squeezenet1_1") == (
        f"cannot read cached weights of squeezenet1_1: {path} needs full unpickling to load (it "
        f"contains {__name__}.Custom), which can run arbitrary code; if you trust this file, "
        "pass --trust-checkpoint (or convert it to safetensors) (if the file is damaged, "
        "delete it to download it again)")
    assert _same(tv.build("squeezenet1_1", trust=True).module, reference)


def test_cached_file_that_does_not_fit(hub):
    hub.mkdir(parents=True)
    path = hub / SQUEEZE_FILE
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    message = invkit_error(tv.build, "squeezenet1_1")
    assert message.startswith(f"cached weights {path} do not fit squeezenet1_1 (")
    assert message.endswith("); delete the file to download it again")
    assert "\n" not in message
    inner = message[len(f"cached weights {path} do not fit squeezenet1_1 ("):
                    -len("); delete the file to download it again")]
    assert len(inner) == 160


def test_download_writes_the_cache_with_a_timeout(hub, monkeypatch):
    reference = _reference()
    calls = []

    def fake_download(url, dst, hash_prefix, progress):
        calls.append((url, dst, hash_prefix, progress, socket.getdefaulttimeout()))
        torch.save(reference.state_dict(), dst)

    monkeypatch.delenv("INVKIT_OFFLINE")
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    socket.setdefaulttimeout(7.0)
    try:
        teacher = tv.build("squeezenet1_1")
        assert socket.getdefaulttimeout() == 7.0
    finally:
        socket.setdefaulttimeout(None)
    assert calls == [(SQUEEZE_URL, str(hub / SQUEEZE_FILE), "b8a52dc0", True, 20.0)]
    assert _same(teacher.module, reference)


def test_download_without_hash_in_the_name(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, hash_prefix, progress: calls.append(hash_prefix))
    member = SimpleNamespace(url="https://h/plain.pth", name="V1")
    tv._download("x", member, tmp_path / "deep" / "plain.pth")
    assert calls == [None] and (tmp_path / "deep").is_dir()


def test_failed_download_message(hub, monkeypatch):
    def fail(*args, **kwargs):
        assert socket.getdefaulttimeout() == tv.DOWNLOAD_TIMEOUT
        raise OSError("unreachable")

    monkeypatch.delenv("INVKIT_OFFLINE")
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    assert invkit_error(tv.build, "squeezenet1_1") == _missing_message(
        hub, "could not be downloaded (OSError)")
    assert socket.getdefaulttimeout() is None
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bad hash")))
    assert invkit_error(tv.build, "squeezenet1_1") == _missing_message(
        hub, "could not be downloaded (RuntimeError)")


def test_state_dict_given_patches_and_restores():
    class Plain:
        pass

    class Own:
        def get_state_dict(self, *args, **kwargs):
            return "own"

    state = {"a": torch.ones(1)}
    with tv._state_dict_given(Plain(), state):
        given = Plain().get_state_dict(1, progress=True)
        assert given == state and given is not state
    assert not hasattr(Plain, "get_state_dict")
    with tv._state_dict_given(Own(), state):
        assert Own().get_state_dict() == state
    assert Own().get_state_dict() == "own"


def test_spec_fields():
    spec = tv.spec("squeezenet1_1")
    assert (spec.name, spec.summary, spec.source, spec.input_size, spec.num_classes,
            spec.default_weights, spec.family, spec.batchnorm, spec.grayscale) == (
        "squeezenet1_1", "weights IMAGENET1K_V1", "torchvision", 224, 1000, "DEFAULT",
        "imagenet", False, False)
    assert spec.factory.func is tv.build and spec.factory.args == ("squeezenet1_1",)
    assert tv.spec("inception_v3").input_size == 299
    assert tv.spec("resnet50").summary == "weights IMAGENET1K_V2"
    assert tv.spec("resnet50").batchnorm is True


def test_resnet50v15():
    assert invkit_error(resnet50v15.build) == (
        "resnet50v15 accepts --weights none or a weights file, not None")
    assert invkit_error(resnet50v15.build, "DEFAULT") == (
        "resnet50v15 accepts --weights none or a weights file, not 'DEFAULT'")
    teacher = resnet50v15.build("none")
    assert teacher.name == "resnet50v15" and teacher.meta.arch == "resnet50v15"
    assert teacher.meta.weights == "none" and teacher.meta.input_size == 224
    assert teacher.module.fc.out_features == 1000
    [spec] = list(resnet50v15.teacher_specs())
    assert (spec.name, spec.summary, spec.source, spec.input_size, spec.num_classes,
            spec.default_weights, spec.family, spec.batchnorm) == (
        "resnet50v15", "NVIDIA's ResNet-50 v1.5 training checkpoint, in torchvision's resnet50",
        "nvidia", 224, 1000, "./models/resnet50v15/model_best.pth.tar", "imagenet", True)
    assert spec.factory is resnet50v15.build
    assert resnet50v15.DEFAULT_FILE.as_posix() == "models/resnet50v15/model_best.pth.tar"


@pytest.mark.parametrize("key,expected", [
    ("layer1.0.shortcut.0.weight", "layer1.0.downsample.0.weight"),
    ("shortcut.0.weight", "downsample.0.weight"),
    ("myshortcut.0.weight", "myshortcut.0.weight"),
    ("linear.weight", "fc.weight"), ("a.linear.bias", "a.fc.bias"),
    ("nonlinear.weight", "nonlinear.weight"), ("layer1.0.conv1.weight", "layer1.0.conv1.weight"),
])
def test_cifar_rename_key(key, expected):
    assert cifar.rename_key(key) == expected


def test_cifar_build_and_specs():
    assert invkit_error(cifar.build, "cifar-resnet18") == (
        "cifar-resnet18 has no bundled weights: pass --weights FILE (your CIFAR-10 checkpoint) "
        "or --weights none for random init")
    assert invkit_error(cifar.build, "cifar-resnet34", "DEFAULT") == (
        "cifar-resnet34 accepts --weights none or a weights file, not 'DEFAULT'")
    teacher = cifar.build("cifar-resnet18", "none")
    assert teacher.meta == TeacherMeta(
        arch="cifar-resnet18", input_size=32, num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                     "ship", "truck"), weights="none", family="cifar10")
    assert teacher.name == "cifar-resnet18" and not teacher.module.training
    assert [len(getattr(teacher.module, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    conv = teacher.module.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
            conv.padding, conv.bias) == (3, 64, (3, 3), (1, 1), (1, 1), None)
    assert isinstance(teacher.module.maxpool, nn.Identity)
    assert cifar.cifar_resnet((3, 4, 6, 3), num_classes=7).fc.out_features == 7
    specs = list(cifar.teacher_specs())
    assert [(s.name, s.summary, s.source, s.input_size, s.num_classes, s.default_weights,
             s.family, s.batchnorm) for s in specs] == [
        (f"cifar-resnet{d}", f"ResNet-{d}, CIFAR form (3x3 stem, no max-pool), CIFAR-10 "
         "classes; your own weights via --weights FILE", "cifar", 32, 10, "required", "cifar10",
         True) for d in ("18", "34")]
    assert specs[1].factory.func is cifar.build and specs[1].factory.args == ("cifar-resnet34",)
    assert cifar.LAYERS == {"cifar-resnet18": (2, 2, 2, 2), "cifar-resnet34": (3, 4, 6, 3)}
