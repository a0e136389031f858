"""Teacher sources: torchvision, offline weights, CIFAR ResNets, ResNet-50 v1.5, verifiers,
plugin teachers, and the one-line errors of each."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from invkit import hookimpl
from invkit.errors import InvkitError
from invkit.registry import registry
from invkit.specs import Teacher, TeacherMeta, TeacherSpec
from invkit.teachers import check_verifier, load_teacher
from invkit.teachers import cifar, torchvision_models


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and no download attempts."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("INVKIT_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_every_torchvision_classifier_is_a_teacher():
    teachers = registry("teacher")
    names = torchvision.models.list_models(module=torchvision.models)
    assert len(names) > 50
    for name in names:
        spec = teachers.get(name)
        assert spec.source == "torchvision" and spec.provider == "invkit.teachers"
        assert spec.num_classes == 1000 and spec.input_size >= 224


def test_metadata_comes_from_the_weights_enum():
    assert torchvision_models.describe("inception_v3")["input_size"] == 299
    assert torchvision_models.describe("efficientnet_b3")["input_size"] == 300
    vit = torchvision_models.describe("efficientnet_v2_l")
    assert vit["mean"] == (0.5, 0.5, 0.5) and vit["std"] == (0.5, 0.5, 0.5)
    teacher = load_teacher("squeezenet1_1", weights="none")
    assert teacher.meta.class_names[:2] == ("tench", "goldfish")
    assert teacher.meta.weights == "none" and teacher.meta.arch == "squeezenet1_1"
    assert not teacher.module.training


def test_torchvision_prefix_and_random_init_forward():
    teacher = load_teacher("torchvision:squeezenet1_1", weights="none")
    assert teacher.name == "torchvision:squeezenet1_1"
    with torch.no_grad():
        logits = teacher.module(teacher.normalize(torch.rand(1, 3, 64, 64)))
    assert logits.shape == (1, 1000)


def test_unknown_architecture_lists_the_closest_names():
    with pytest.raises(InvkitError) as info:
        load_teacher("resnet5O")
    message = str(info.value)
    assert "unknown teacher 'resnet5O'; did you mean: resnet50" in message and "\n" not in message
    with pytest.raises(InvkitError, match="did you mean: torchvision:resnet18"):
        load_teacher("torchvision:resnt18")


def test_unknown_weights_name_lists_valid_ones():
    with pytest.raises(InvkitError, match="unknown weights 'IMAGENET1K_V9' for resnet50 "
                                          r"\(valid: none, DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"):
        load_teacher("resnet50", weights="IMAGENET1K_V9")


def test_missing_weights_offline_names_the_file_and_cache_dir(empty_hub):
    with pytest.raises(InvkitError) as info:
        load_teacher("resnet18")
    message = str(info.value)
    assert "\n" not in message
    assert f"put resnet18-f37072fd.pth (from https://download.pytorch.org/models/" in message
    assert f"in {empty_hub}," in message
    assert "--weights FILE" in message


def test_cached_weights_are_used_offline(empty_hub):
    torch.manual_seed(5)
    reference = torchvision.models.squeezenet1_1()
    empty_hub.mkdir(parents=True)
    torch.save(reference.state_dict(), empty_hub / "squeezenet1_1-b8a52dc0.pth")
    teacher = load_teacher("squeezenet1_1", weights="IMAGENET1K_V1")
    assert teacher.meta.weights == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    state = teacher.module.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in reference.state_dict().items())


def test_corrupted_cached_weights(empty_hub):
    empty_hub.mkdir(parents=True)
    (empty_hub / "squeezenet1_1-b8a52dc0.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InvkitError, match="cannot read cached weights .*squeezenet1_1-b8a52dc0"):
        load_teacher("squeezenet1_1")


def test_torchvision_arch_with_a_weights_file(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.squeezenet1_1()
    path = tmp_path / "mine.pth"
    torch.save({"model": reference.state_dict()}, path)
    for teacher in (load_teacher("squeezenet1_1", weights=str(path)),
                    load_teacher(f"checkpoint:{path}", arch="squeezenet1_1")):
        assert torch.equal(teacher.module.features[0].weight, reference.features[0].weight)
        assert teacher.meta.weights == str(path)


def test_arch_only_applies_to_checkpoints():
    with pytest.raises(InvkitError, match="--arch resnet18 only applies to --teacher checkpoint"):
        load_teacher("digits", arch="resnet18")
    assert load_teacher(None, arch="digits").meta.arch == "digits"
    with pytest.raises(InvkitError, match="no teacher given"):
        load_teacher(None)


def test_cifar_resnets_have_the_cifar_form():
    teacher = load_teacher("cifar-resnet18", weights="none")
    module = teacher.module
    assert module.conv1.kernel_size == (3, 3) and module.conv1.stride == (1, 1)
    assert isinstance(module.maxpool, nn.Identity)
    assert teacher.meta.class_names[3] == "cat" and teacher.meta.input_size == 32
    assert teacher.meta.mean == cifar.CIFAR10_MEAN
    with torch.no_grad():
        assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    depth34 = sum(isinstance(m, nn.Conv2d) for m in load_teacher(
        "cifar-resnet34", weights="none").module.modules())
    assert depth34 == 33 + 3  # 33 convs plus 3 projection shortcuts


def test_cifar_resnet_needs_weights():
    with pytest.raises(InvkitError, match="cifar-resnet34 has no bundled weights: pass --weights"):
        load_teacher("cifar-resnet34")


def test_cifar_checkpoint_with_shortcut_and_linear_names(tmp_path):
    torch.manual_seed(2)
    reference = cifar.cifar_resnet(cifar.LAYERS["cifar-resnet18"])
    state = {}
    for key, value in reference.state_dict().items():
        key = key.replace("downsample.", "shortcut.").replace("fc.", "linear.")
        state[f"module.{key}"] = value
    path = tmp_path / "ckpt.pth"
    torch.save({"net": state, "acc": 95.0, "epoch": 199}, path)
    teacher = load_teacher("cifar-resnet18", weights=str(path))
    assert torch.equal(teacher.module.fc.weight, reference.fc.weight)
    assert torch.equal(teacher.module.layer2[0].downsample[0].weight,
                       reference.layer2[0].downsample[0].weight)


def test_resnet50v15_missing_default_file_says_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvkitError) as info:
        load_teacher("resnet50v15")
    message = str(info.value)
    assert "not found at ./models/resnet50v15/model_best.pth.tar" in message
    assert str(tmp_path / "models" / "resnet50v15" / "model_best.pth.tar") in message
    assert "--weights FILE" in message and "NVIDIA" in message


def test_resnet50v15_loads_an_nvidia_style_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(3)
    reference = torchvision.models.resnet50()
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    default = tmp_path / "models" / "resnet50v15" / "model_best.pth.tar"
    default.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 90, "arch": "resnet50", "best_prec1": 77.2},
               default)
    teacher = load_teacher("resnet50v15")
    assert teacher.meta.arch == "resnet50v15" and teacher.meta.num_classes == 1000
    assert teacher.meta.weights.endswith("model_best.pth.tar")
    assert torch.equal(teacher.module.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    # v1.5: stride 2 on the 3x3 conv of the first bottleneck of a stage.
    assert teacher.module.layer2[0].conv2.stride == (2, 2)


def _teacher(name, size=32, classes=10):
    return Teacher(module=nn.Identity(), meta=TeacherMeta(arch=name, input_size=size,
                                                          num_classes=classes), name=name)


def test_check_verifier_refuses_mismatches():
    check_verifier(_teacher("a"), _teacher("b"))
    with pytest.raises(InvkitError, match="verifier 'b' does not fit teacher 'a': it has 1000 "
                                          "classes, the teacher 10"):
        check_verifier(_teacher("a"), _teacher("b", classes=1000))
    with pytest.raises(InvkitError, match="its input size is 224 px, the teacher's 32 px"):
        check_verifier(_teacher("a"), _teacher("b", size=224))


class BareModulePlugin:
    """A plugin whose factory returns a plain module (the spec carries the metadata)."""

    @hookimpl
    def invkit_teachers(self):
        yield TeacherSpec("bare-net", "a bare module", factory=lambda weights=None: nn.Linear(3, 4),
                          source="test", input_size=8, num_classes=4)
        yield TeacherSpec("broken-net", "raises", factory=lambda weights=None: 1 / 0,
                          source="test", input_size=8, num_classes=4)


def test_plugin_teachers_load_and_fail_in_one_line(register_plugin, tmp_path):
    register_plugin(BareModulePlugin(), "bare-plugin")
    teacher = load_teacher("bare-net")
    assert (teacher.meta.input_size, teacher.meta.num_classes) == (8, 4)
    assert teacher.meta.arch == "bare-net"
    # A weights file for a plugin teacher is loaded by invkit, not by the plugin.
    torch.manual_seed(4)
    reference = nn.Linear(3, 4)
    path = tmp_path / "bare.pt"
    torch.save(reference.state_dict(), path)
    assert torch.equal(load_teacher("bare-net", weights=str(path)).module.weight, reference.weight)
    with pytest.raises(InvkitError, match="teacher 'broken-net' \\(from plugin 'bare-plugin'\\) "
                                          "failed to build: ZeroDivisionError"):
        load_teacher("broken-net")


def test_listing_json_has_torchvision_and_builtin_sources(invoke):
    result = invoke("teachers", "list", "--include", "resnet50*", "--include", "cifar-*",
                    "--json")
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["resnet50"]["source"] == "torchvision"
    assert rows["resnet50v15"]["source"] == "nvidia"
    assert (rows["cifar-resnet34"]["input_size"], rows["cifar-resnet34"]["num_classes"]) == (32, 10)


def test_cli_errors_are_one_line_exit_2(empty_hub):
    from click.testing import CliRunner

    from invkit.cli import make_cli

    for args, expected in (
        (["--arch", "resnet5O"], "unknown teacher 'resnet5O'; did you mean: resnet50"),
        (["--arch", "resnet18"], "put resnet18-f37072fd.pth"),
        (["--teacher", "digits", "--verifier-arch", "squeezenet1_1", "--verifier-weights",
          "none"], "verifier 'squeezenet1_1' does not fit teacher 'digits': it has 1000"),
        (["--teacher", "checkpoint:/nonexistent/w.pth", "--arch", "digits"],
         "weights file not found: /nonexistent/w.pth"),
    ):
        result = CliRunner().invoke(make_cli(), ["run", "deepinversion", *args, "--iterations",
                                                 "4", "--bs", "2", "--output",
                                                 str(empty_hub.parent / "out")])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and expected in lines[0], result.output
        assert "Traceback" not in result.output
