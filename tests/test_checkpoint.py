"""Weights files: formats, nesting, prefixes, key mismatches, unsafe pickles, corruption."""

from __future__ import annotations

import collections
import json

import pytest
import torch
from torch import nn

from invkit.errors import InvkitError
from invkit.teachers import load_teacher, save_teacher
from invkit.teachers.checkpoint import (
    extract_state_dict, load_into, read_metadata, read_state_dict, strip_prefixes,
)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def digits_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_teacher("digits").module.state_dict().items()}


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pth.tar"])
@pytest.mark.parametrize("nesting", ["bare", "state_dict", "model"])
def test_pickled_checkpoints_load_bare_or_nested(tmp_path, suffix, nesting):
    state = digits_state()
    payload = state if nesting == "bare" else {nesting: state, "epoch": 90, "arch": "x"}
    path = tmp_path / f"w{suffix}"
    torch.save(payload, path)
    teacher = load_teacher(f"checkpoint:{path}", arch="digits")
    assert same_weights(teacher.module, load_teacher("digits").module)
    assert teacher.meta.weights == str(path)
    assert teacher.meta.num_classes == 10


def test_module_prefixes_are_stripped(tmp_path):
    state = digits_state()
    wrapped = {f"module._orig_mod.{k}": v for k, v in state.items()}
    path = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    teacher = load_teacher("digits", weights=str(path))
    assert same_weights(teacher.module, load_teacher("digits").module)


def test_strip_prefixes_leaves_matching_keys_alone():
    t = torch.zeros(1)
    assert strip_prefixes({"model.a": t, "b": t}, {"model.a", "b"}) == {"model.a": t, "b": t}
    assert sorted(strip_prefixes({"module.fc.bias": t}, {"fc.bias"})) == ["fc.bias"]


def test_missing_bn_counters_are_tolerated(tmp_path):
    state = {k: v for k, v in digits_state().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    assert load_teacher(f"checkpoint:{path}", arch="digits").meta.arch == "digits"


def test_wrong_architecture_names_the_keys(tmp_path):
    path = tmp_path / "verifier.pth"
    torch.save(load_teacher("digits-verifier").module.state_dict(), path)
    with pytest.raises(InvkitError) as info:
        load_teacher(f"checkpoint:{path}", arch="digits")
    message = str(info.value)
    assert "\n" not in message
    assert "do not fit digits" in message
    assert "missing (bn1.bias" in message            # keys of the ResNet, by name
    assert "unexpected (classifier.1.bias" in message  # keys of the plain CNN, by name


def test_wrong_shapes_are_named(tmp_path):
    state = digits_state()
    state["fc.weight"] = torch.zeros(7, 64)
    state["fc.bias"] = torch.zeros(7)
    path = tmp_path / "seven.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(InvkitError, match=r"fc.bias: file \(7,\) vs network \(10,\)"):
        load_teacher(f"checkpoint:{path}", arch="digits")


class Custom:
    """Anything that is not a tensor or a plain container needs full unpickling."""

    def __init__(self):
        self.value = 1


def test_full_unpickling_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "needs_pickle.pth"
    torch.save({"state_dict": digits_state(), "extra": Custom()}, path)
    with pytest.raises(InvkitError, match="--trust-checkpoint") as info:
        load_teacher(f"checkpoint:{path}", arch="digits")
    assert "Custom" in str(info.value)
    teacher = load_teacher(f"checkpoint:{path}", arch="digits", trust_checkpoint=True)
    assert same_weights(teacher.module, load_teacher("digits").module)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_files_are_clear_errors(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    if suffix == ".safetensors":
        save_teacher(load_teacher("digits"), good)
    else:
        torch.save(digits_state(), good)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InvkitError, match="corrupted or truncated") as info:
        load_teacher(f"checkpoint:{bad}", arch="digits")
    assert str(bad) in str(info.value)


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(InvkitError, match="cannot read"):
        read_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(InvkitError, match="weights file not found: .*nope.pth"):
        load_teacher(f"checkpoint:{tmp_path / 'nope.pth'}", arch="digits")


def test_no_state_dict_inside(tmp_path):
    path = tmp_path / "meta_only.pt"
    torch.save({"epoch": 3, "best_acc1": 0.5}, path)
    with pytest.raises(InvkitError, match="has no state dict .*its keys: epoch, best_acc1"):
        read_state_dict(path)


def test_extract_state_dict_prefers_nested_entries():
    inner = collections.OrderedDict(a=torch.ones(1))
    assert extract_state_dict({"state_dict": inner, "epoch": 1}) == {"a": inner["a"]}
    assert list(extract_state_dict({"model": nn.Linear(1, 1)})) == ["weight", "bias"]


def test_save_teacher_round_trips_without_arch(tmp_path):
    teacher = load_teacher("digits-verifier")
    path = save_teacher(teacher, tmp_path / "copy.safetensors", extra={"note": "hi"})
    metadata = read_metadata(path)
    assert metadata["arch"] == "digits-verifier" and metadata["note"] == "hi"
    assert json.loads(metadata["class_names"]) == [str(i) for i in range(10)]
    again = load_teacher(f"checkpoint:{path}")
    assert same_weights(again.module, teacher.module)
    assert again.meta.arch == "digits-verifier"
    assert again.meta.mean == teacher.meta.mean
    assert again.meta.class_names == teacher.meta.class_names
    assert again.name == f"checkpoint:{path}"


def test_checkpoint_without_metadata_needs_arch(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(digits_state(), path)
    with pytest.raises(InvkitError, match="pass --arch NAME"):
        load_teacher(f"checkpoint:{path}")


def test_metadata_naming_an_unknown_arch(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "alien.safetensors"
    save_file(digits_state(), str(path), metadata={"format": "invkit.teacher/1",
                                                     "arch": "alien-net"})
    with pytest.raises(InvkitError, match="'alien-net' network, which no installed plugin"):
        load_teacher(f"checkpoint:{path}")


def test_load_into_plain_module():
    net = small_net()
    net(torch.zeros(1, 3, 5, 5))  # materialise the lazy layer
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    other = small_net()
    other(torch.zeros(1, 3, 5, 5))
    load_into(other, state, source="mem")
    assert same_weights(net, other)


def test_safetensors_is_recognised_by_content_not_only_by_name(tmp_path):
    import io

    from safetensors.torch import save as save_safetensors

    from invkit.teachers.checkpoint import _is_safetensors

    def file(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    real = save_safetensors({"w": torch.zeros(2)})
    zipped = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, zipped)
    small_length = (16).to_bytes(8, "little")
    assert _is_safetensors(file("any.safetensors", b""))  # the name decides first
    assert _is_safetensors(file("weights.bin", real))
    assert not _is_safetensors(file("torch.pt", zipped.getvalue()))
    assert not _is_safetensors(file("short.bin", real[:8]))                   # 8 bytes
    assert not _is_safetensors(file("nojson.bin", small_length + b"[" + real[9:]))
    assert not _is_safetensors(file("huge.bin", (1 << 30).to_bytes(8, "little") + b"{}"))
    assert _is_safetensors(file("edge.bin", ((1 << 30) - 1).to_bytes(8, "little") + b"{}"))
