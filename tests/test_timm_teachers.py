"""timm:NAME teachers: metadata from timm's pretrained config, offline weights, small
resolution, listings, and the one-line errors (timm is the optional 'timm' extra)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from invkit.errors import InvkitError
from invkit.teachers import find_teacher, has_batchnorm, load_teacher, save_teacher

needs_timm = pytest.mark.skipif(
    not __import__("invkit.teachers.timm_models", fromlist=["available"]).available(),
    reason="timm is not installed (pip install 'invkit[timm]')")


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and no download attempts."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("INVKIT_OFFLINE", "1")
    return tmp_path / "hub"


@needs_timm
def test_spec_metadata_comes_from_timms_pretrained_config():
    spec = find_teacher("timm:vit_tiny_patch16_224")
    assert (spec.name, spec.source, spec.input_size, spec.num_classes) == (
        "timm:vit_tiny_patch16_224", "timm", 224, 1000)
    assert spec.batchnorm is False and spec.family == "imagenet"
    assert spec.summary == "weights augreg_in21k_ft_in1k"
    assert find_teacher("timm:test_resnet").batchnorm is True
    tagged = find_teacher("timm:vit_tiny_patch16_224.augreg_in21k")
    assert tagged.num_classes == 21843 and tagged.family is None


@needs_timm
def test_vit_at_32_px_with_random_init_runs_forward_and_backward():
    teacher = load_teacher("timm:vit_tiny_patch16_224", weights="none", input_size=32)
    assert teacher.name == "timm:vit_tiny_patch16_224"
    assert (teacher.meta.input_size, teacher.meta.num_classes) == (32, 1000)
    assert (teacher.meta.mean, teacher.meta.std) == ((0.5,) * 3, (0.5,) * 3)
    assert teacher.meta.class_names[:2] == ("tench", "goldfish")
    assert teacher.meta.weights == "none" and not teacher.module.training
    assert not has_batchnorm(teacher.module)
    assert teacher.module.pos_embed.shape == (1, 5, 192)  # 2x2 patches + class token
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = teacher.module(teacher.normalize(x))
    assert logits.shape == (2, 1000)
    logits[:, 1].sum().backward()
    assert x.grad.abs().sum() > 0


@needs_timm
def test_a_convnet_takes_any_size_and_records_it():
    teacher = load_teacher("timm:test_resnet", weights="none", input_size=32)
    assert teacher.meta.input_size == 32 and has_batchnorm(teacher.module)
    with torch.no_grad():
        assert teacher.module(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


@needs_timm
def test_weights_file_and_checkpoint_round_trip(tmp_path):
    teacher = load_teacher("timm:test_vit", weights="none", input_size=32)
    path = save_teacher(teacher, tmp_path / "vit.safetensors")
    again = load_teacher(f"checkpoint:{path}")
    assert again.meta.arch == "timm:test_vit" and again.meta.input_size == 32
    a, b = teacher.module.state_dict(), again.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    full = load_teacher("timm:test_vit", weights="none")
    save_file({k: v.contiguous() for k, v in full.module.state_dict().items()}, str(plain))
    loaded = load_teacher("timm:test_vit", weights=str(plain))
    assert loaded.meta.weights == str(plain) and loaded.meta.input_size == 160
    assert torch.equal(loaded.module.state_dict()["head.weight"],
                       full.module.state_dict()["head.weight"])


@needs_timm
def test_missing_default_weights_name_the_file_and_where_it_goes(empty_hf_cache):
    with pytest.raises(InvkitError) as info:
        load_teacher("timm:test_vit")
    message = str(info.value)
    assert "\n" not in message
    for fragment in ("timm weights for test_vit are not in the Hugging Face cache",
                     str(empty_hf_cache), "INVKIT_OFFLINE is set",
                     "download model.safetensors from https://huggingface.co/timm/test_vit."
                     "r160_in1k", "--weights FILE", "--weights none"):
        assert fragment in message


@needs_timm
def test_architectures_without_pretrained_weights_say_so():
    assert find_teacher("timm:seresnet18").summary == "no pretrained weights"
    with pytest.raises(InvkitError, match="^timm has no pretrained weights for seresnet18 \\(its "
                                          "config is 'untrained'\\): pass --weights FILE, or "
                                          "--weights none for random init$"):
        load_teacher("timm:seresnet18")


@needs_timm
def test_cached_default_weights_are_read_offline(empty_hf_cache):
    from safetensors.torch import save_file

    reference = load_teacher("timm:test_vit", weights="none")
    snapshot = empty_hf_cache / "models--timm--test_vit.r160_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in reference.module.state_dict().items()},
              str(snapshot / "model.safetensors"))
    teacher = load_teacher("timm:test_vit")
    assert teacher.meta.weights == "timm/test_vit.r160_in1k"
    assert torch.equal(teacher.module.state_dict()["head.weight"],
                       reference.module.state_dict()["head.weight"])


@needs_timm
@pytest.mark.parametrize("spec,expected", [
    ("timm:vit_tiny_patch16_22", "unknown teacher 'timm:vit_tiny_patch16_22'; did you mean: "
                                 "timm:vit_tiny_patch16_224"),
    ("timm:vit_tiny_patch16_224.nope", "timm has no pretrained tag 'nope' for "
                                       "vit_tiny_patch16_224 (valid: augreg_in21k, "
                                       "augreg_in21k_ft_in1k)"),
    ("timm:eva02_tiny_patch14_224", "timm:eva02_tiny_patch14_224 has no classifier head in "
                                    "timm's pretrained config (0 classes)"),
])
def test_bad_names_are_one_line_errors(spec, expected):
    with pytest.raises(InvkitError) as info:
        load_teacher(spec, weights="none")
    assert expected in str(info.value) and "\n" not in str(info.value)


@needs_timm
def test_timm_teachers_are_listed_only_when_asked_for(invoke):
    plain = invoke("teachers", "list", "--json").output
    assert "timm:" not in plain
    rows = json.loads(invoke("teachers", "list", "--include", "timm:test_vit*", "--exclude",
                             "*relpos", "--json").output)
    assert [r["name"] for r in rows] == ["timm:test_vit", "timm:test_vit2", "timm:test_vit3",
                                         "timm:test_vit4"]
    assert {(r["source"], r["batchnorm"], r["num_classes"]) for r in rows} == {
        ("timm", None, 1000)}
    table = invoke("teachers", "list", "--include", "timm:test_resnet").output
    line = next(l for l in table.splitlines() if "timm:test_resnet" in l)
    assert line.split()[1:10] == ["timm:test_resnet", "│", "timm", "│", "160", "│", "1000",
                                  "│", "?"]
    shown = json.loads(invoke("teachers", "show", "timm:test_resnet", "--json").output)
    assert shown["batchnorm"] is True and shown["input_size"] == 160


def test_without_timm_the_error_names_the_extra(monkeypatch, invoke):
    from invkit.teachers import timm_models

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    timm_models._all_configs.cache_clear()
    monkeypatch.setattr(timm_models, "_all_configs", timm_models._all_configs.__wrapped__)
    with pytest.raises(InvkitError, match="^timm teachers need the timm package: "
                                          "pip install 'invkit\\[timm\\]'$"):
        load_teacher("timm:vit_tiny_patch16_224", weights="none")
    result = invoke("teachers", "list", "--include", "timm:vit*")
    assert result.exit_code == 2
    assert result.output == "Error: timm teachers need the timm package: pip install " \
                            "'invkit[timm]'\n"
