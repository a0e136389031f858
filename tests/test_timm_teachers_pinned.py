"""invkit.teachers.timm_models pinned exactly: names and tags, the metadata read from timm's
pretrained configs, spec fields, and every message about missing weights in full (the Hugging
Face cache lookups and downloads are replaced by recording fakes: nothing is fetched)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from invkit.errors import InvkitError, unknown
from invkit.teachers import timm_models as tm
from tests.expect import invkit_error

pytest.importorskip("timm", reason="timm is the optional 'timm' extra")


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """An empty Hugging Face cache; lookups and downloads recorded, never on the network."""
    import huggingface_hub
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("INVKIT_OFFLINE", "1")
    calls = {"lookups": [], "downloads": [], "cached": {}, "download": None}

    def lookup(repo, filename, revision=None):
        calls["lookups"].append((repo, filename, revision))
        return calls["cached"].get(filename)

    def download(repo, filename, revision=None):
        calls["downloads"].append((repo, filename, revision))
        if isinstance(calls["download"], Exception):
            raise calls["download"]
        return calls["download"]

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lookup)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    calls["cache"] = tmp_path / "hub"
    return calls


def _missing(name, repo, filename, reason, cache):
    return (f"timm weights for {name} are not in the Hugging Face cache ({cache}) and {reason}: "
            f"download {filename} from https://huggingface.co/{repo} and pass --weights FILE, "
            f"or cache it there with 'hf download {repo} {filename}' (--weights none for "
            "random init)")


def test_constants_and_availability():
    assert tm.PREFIX == "timm:" and tm.INSTALL == "pip install 'invkit[timm]'"
    assert tm.HUB_FILES == ("model.safetensors", "pytorch_model.bin")
    assert tm.available() is True


def test_without_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    assert invkit_error(tm._timm) == (
        "timm teachers need the timm package: pip install 'invkit[timm]'")


@pytest.mark.parametrize("value,expected", [(None, False), ("", False), ("0", False),
                                            ("1", True)])
def test_offline(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("INVKIT_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("INVKIT_OFFLINE", value)
    assert tm.offline() is expected


def test_model_names_are_the_classifiers():
    names = tm.model_names()
    assert "test_vit" in names and "vit_tiny_patch16_224" in names
    assert "eva02_tiny_patch14_224" not in names and "vit_so400m_patch14_siglip_378" not in names
    assert "seresnet18" in names


def test_config_errors_in_full():
    expected = unknown("teacher", "timm:test_vi", [f"timm:{n}" for n in tm.model_names()])
    assert invkit_error(tm._config, "test_vi") == str(expected)
    assert str(expected).startswith("unknown teacher 'timm:test_vi'; did you mean: timm:test_vit")
    assert invkit_error(tm._config, "test_vit.nope") == (
        "timm has no pretrained tag 'nope' for test_vit (valid: r160_in1k)")
    assert invkit_error(tm._config, "vit_tiny_patch16_224.nope") == (
        "timm has no pretrained tag 'nope' for vit_tiny_patch16_224 (valid: augreg_in21k, "
        "augreg_in21k_ft_in1k)")
    assert invkit_error(tm._config, "eva02_tiny_patch14_224") == (
        "timm:eva02_tiny_patch14_224 has no classifier head in timm's pretrained config (0 "
        "classes): timm has no classifier weights for it")
    assert invkit_error(tm._config, "vit_so400m_patch14_siglip_378") == (
        "timm:vit_so400m_patch14_siglip_378 has no classifier head in timm's pretrained config "
        "(0 classes): name a classifier tag, e.g. "
        "timm:vit_so400m_patch14_siglip_378.webli_ft_in1k (classifier tags: webli_ft_in1k)")
    assert tm._tags("seresnet18") == []
    assert tm._tags("vit_tiny_patch16_224") == ["augreg_in21k", "augreg_in21k_ft_in1k"]


def test_config_with_no_tags_says_none(monkeypatch):
    monkeypatch.setattr(tm, "_tags", lambda arch: [])
    assert invkit_error(tm._config, "test_vit.x") == (
        "timm has no pretrained tag 'x' for test_vit (valid: none)")


def test_describe_in_full():
    info = tm.describe("test_vit")
    names = info.pop("class_names")
    assert info == {"input_size": 160, "num_classes": 1000, "mean": (0.5, 0.5, 0.5),
                    "std": (0.5, 0.5, 0.5), "hf_hub_id": "timm/test_vit.r160_in1k",
                    "hf_hub_filename": None, "url": None, "tag": "r160_in1k"}
    assert len(names) == 1000 and names[:3] == ("tench", "goldfish", "great white shark")
    assert tm.describe("resnet18")["mean"] == (0.485, 0.456, 0.406)
    assert tm.describe("resnet18")["std"] == (0.229, 0.224, 0.225)
    untrained = tm.describe("seresnet18")
    assert (untrained["hf_hub_id"], untrained["url"], untrained["tag"]) == (None, None,
                                                                           "untrained")
    tagged = tm.describe("vit_tiny_patch16_224.augreg_in21k")
    assert tagged["num_classes"] == 21843 and tagged["input_size"] == 224


def test_class_names_need_a_matching_count():
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg("test_vit")
    assert tm._class_names(cfg)[2] == "great white shark"
    cfg.num_classes = 999
    assert tm._class_names(cfg) is None
    assert tm._class_names(object()) is None


def test_batchnorm():
    assert tm.batchnorm("test_resnet") is True
    assert tm.batchnorm("test_vit.r160_in1k") is False
    with pytest.raises(InvkitError):
        tm.batchnorm("nonexistent_net")


def test_batchnorm_unknown_when_not_buildable(monkeypatch):
    class Broken:
        @staticmethod
        def create_model(*args, **kwargs):
            raise RuntimeError("no meta device")

    tm.batchnorm.cache_clear()
    monkeypatch.setattr(tm, "_timm", lambda: Broken)
    try:
        assert tm.batchnorm("test_efficientnet") is None
    finally:
        tm.batchnorm.cache_clear()


def test_spec_fields():
    spec = tm.spec("test_vit")
    assert (spec.name, spec.summary, spec.source, spec.input_size, spec.num_classes,
            spec.default_weights, spec.family, spec.batchnorm) == (
        "timm:test_vit", "weights r160_in1k", "timm", 160, 1000, "DEFAULT", "imagenet", None)
    assert spec.factory.func is tm.build and spec.factory.args == ("test_vit",)
    assert tm.spec("test_vit", with_batchnorm=True).batchnorm is False
    assert tm.spec("seresnet18").summary == "no pretrained weights"
    assert tm.spec("gcvit_xxtiny").summary == "weights in1k"
    assert tm.spec("vit_tiny_patch16_224.augreg_in21k").family is None


def test_teacher_specs_filter():
    specs = tm.teacher_specs(include=["timm:test_vit*"], exclude=["*relpos", "*4"])
    assert [s.name for s in specs] == ["timm:test_vit", "timm:test_vit2", "timm:test_vit3"]
    assert [s.name for s in tm.teacher_specs(include=["timm:test_resnet"])] == [
        "timm:test_resnet"]


def test_build_random_init_meta():
    teacher = tm.build("test_vit", weights="NONE")
    meta = teacher.meta
    assert (meta.arch, meta.input_size, meta.num_classes, meta.mean, meta.std, meta.weights,
            meta.family) == ("timm:test_vit", 160, 1000, (0.5,) * 3, (0.5,) * 3, "none",
                             "imagenet")
    assert meta.class_names[0] == "tench" and teacher.name == "timm:test_vit"
    assert not teacher.module.training
    assert teacher.module.pos_embed.shape[1] == 101  # class token + 10x10 patches at 160 px
    small = tm.build("test_vit", weights="none", input_size=32)
    assert small.meta.input_size == 32 and small.module.pos_embed.shape[1] == 5


def test_create_falls_back_without_img_size():
    net = tm._create("test_resnet", 7, 32)
    assert net.fc.out_features == 7
    assert tm._create("test_resnet", 5, None).fc.out_features == 5


def test_pretrained_file_messages(hf):
    untrained = {"hf_hub_id": None, "url": None, "tag": None}
    assert invkit_error(tm._pretrained_file, "x", untrained) == (
        "timm has no pretrained weights for x (its config is 'untrained'): pass --weights FILE, "
        "or --weights none for random init")
    assert invkit_error(tm._pretrained_file, "x", {"hf_hub_id": "", "url": None, "tag": "t1"}) == (
        "timm has no pretrained weights for x (its config is 't1'): pass --weights FILE, or "
        "--weights none for random init")
    assert invkit_error(tm._pretrained_file, "y", {"hf_hub_id": None, "url": "http://u/w.pth",
                                              "tag": "t"}) == (
        "timm:y's pretrained weights are not on the Hugging Face hub (timm fetches them from "
        "http://u/w.pth): download that file and pass --weights FILE (or --weights none for "
        "random init)")
    assert hf["lookups"] == []


def test_pretrained_file_lookup_order_and_revision(hf):
    info = {"hf_hub_id": "org/repo@rev1", "url": None, "tag": "t", "hf_hub_filename": None}
    hf["cached"]["pytorch_model.bin"] = "/cache/pytorch_model.bin"
    assert tm._pretrained_file("n", info) == Path("/cache/pytorch_model.bin")
    assert hf["lookups"] == [("org/repo", "model.safetensors", "rev1"),
                             ("org/repo", "pytorch_model.bin", "rev1")]
    hf["lookups"].clear()
    hf["cached"]["model.safetensors"] = "/cache/model.safetensors"
    assert tm._pretrained_file("n", dict(info, hf_hub_id="org/repo")) == Path(
        "/cache/model.safetensors")
    assert hf["lookups"] == [("org/repo", "model.safetensors", None)]


def test_pretrained_file_offline_and_download(hf, monkeypatch):
    info = {"hf_hub_id": "org/repo", "url": None, "tag": "t", "hf_hub_filename": "w.bin"}
    assert invkit_error(tm._pretrained_file, "n", info) == _missing(
        "n", "org/repo", "w.bin", "INVKIT_OFFLINE is set", hf["cache"])
    assert hf["lookups"] == [("org/repo", "w.bin", None)] and hf["downloads"] == []
    monkeypatch.delenv("INVKIT_OFFLINE")
    hf["download"] = "/got/w.bin"
    assert tm._pretrained_file("n", dict(info, hf_hub_id="org/repo@r")) == Path("/got/w.bin")
    assert hf["downloads"] == [("org/repo", "w.bin", "r")]
    hf["download"] = TimeoutError("slow")
    assert invkit_error(tm._pretrained_file, "n", dict(info, hf_hub_filename=None)) == _missing(
        "n", "org/repo", "model.safetensors", "could not be downloaded (TimeoutError)",
        hf["cache"])
    assert hf["downloads"][-1] == ("org/repo", "model.safetensors", None)


def test_build_with_cached_weights_and_tags(hf, tmp_path):
    from safetensors.torch import save_file

    reference = tm.build("test_vit", weights="none")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.module.state_dict().items()}, str(path))
    hf["cached"]["model.safetensors"] = str(path)
    for weights in (None, "DEFAULT", "default", "r160_in1k"):
        teacher = tm.build("test_vit", weights=weights)
        assert teacher.meta.weights == "timm/test_vit.r160_in1k"
        assert torch.equal(teacher.module.state_dict()["head.weight"],
                           reference.module.state_dict()["head.weight"])
    assert hf["lookups"][-1] == ("timm/test_vit.r160_in1k", "model.safetensors", None)
    tagged = tm.build("test_vit.r160_in1k")
    assert tagged.name == "timm:test_vit.r160_in1k" and tagged.meta.arch == "timm:test_vit"
    assert invkit_error(tm.build, "test_vit", weights="other") == (
        "timm has no pretrained tag 'other' for test_vit (valid: r160_in1k)")
    save_file({"head.weight": torch.zeros(1)}, str(path))
    assert invkit_error(tm.build, "test_vit").startswith(
        f"weights {path} do not fit timm:test_vit: ")


def test_build_missing_default_weights(hf):
    assert invkit_error(tm.build, "test_vit") == _missing(
        "test_vit", "timm/test_vit.r160_in1k", "model.safetensors", "INVKIT_OFFLINE is set",
        hf["cache"])
