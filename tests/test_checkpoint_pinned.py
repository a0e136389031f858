"""invkit.teachers.checkpoint pinned exactly: every error message in full, the sniffing and
prefix-stripping rules at their boundaries, the metadata written and the metadata refused."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from invkit.specs import TeacherMeta
from invkit.teachers import checkpoint as ck
from tests.expect import invkit_error

TAIL = " - is it a checkpoint of another architecture? (choose it with --arch)"


def test_constants_callers_rely_on():
    """The format tag, suffixes, nesting order and limits are part of the file contract."""
    assert ck.FORMAT == "invkit.teacher/1"
    assert ck.SUFFIXES == (".safetensors", ".pt", ".pth", ".pth.tar", ".tar", ".bin", ".ckpt")
    assert ck.NESTED_KEYS == ("state_dict", "model", "model_state_dict", "module", "net")
    assert ck.KNOWN_PREFIXES == ("module.", "_orig_mod.", "model.", "net.", "backbone.",
                                 "teacher.", "encoder.")
    assert (ck.MAX_INPUT_SIZE, ck.MAX_NUM_CLASSES, ck.SHOW) == (8192, 1_000_000, 5)
    assert ck.PRUNED_KEY == "pruned"


@pytest.mark.parametrize("value,expected", [
    ("IMAGENET1K_V2", False), ("none", False), ("DEFAULT", False), ("a/b", True),
    ("W.PTH", True), ("x.safetensors", True), ("x.pt", True), ("x.tar", True),
    ("x.bin", True), ("x.CKPT", True), ("x.pth.tar", True), ("safetensors", False),
])
def test_looks_like_file(value, expected):
    """Suffixes match case-insensitively; a slash means a path."""
    assert ck.looks_like_file(value) is expected


def test_looks_like_file_sees_an_existing_bare_name(tmp_path, monkeypatch):
    """A file in the working directory without suffix or slash is still a file."""
    monkeypatch.chdir(tmp_path)
    assert ck.looks_like_file("myweights") is False
    (tmp_path / "myweights").write_bytes(b"x")
    assert ck.looks_like_file("myweights") is True


def test_missing_and_directory_paths(tmp_path):
    """Both refusals name the path exactly."""
    assert invkit_error(ck.read_state_dict, tmp_path / "nope.pth") == (
        f"weights file not found: {tmp_path / 'nope.pth'}")
    assert invkit_error(ck.read_metadata, tmp_path) == f"weights path is not a file: {tmp_path}"


def _file(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_is_safetensors_sniffing_boundaries(tmp_path):
    """8-byte little-endian header length < 2**30, then '{'; or the suffix in any case."""
    small = (5).to_bytes(8, "little")
    assert ck._is_safetensors(_file(tmp_path, "a.bin", small + b"{rest"))
    assert not ck._is_safetensors(_file(tmp_path, "b.bin", small + b"[rest"))
    assert not ck._is_safetensors(_file(tmp_path, "c.bin", small))            # 8 bytes only
    assert ck._is_safetensors(_file(tmp_path, "d.bin", ((1 << 30) - 1).to_bytes(8, "little")
                                    + b"{"))
    assert not ck._is_safetensors(_file(tmp_path, "e.bin", (1 << 30).to_bytes(8, "little")
                                        + b"{"))
    assert ck._is_safetensors(_file(tmp_path, "f.SafeTensors", b""))
    assert not ck._is_safetensors(_file(tmp_path, "g.pt", b""))


def test_read_metadata_of_other_files_and_plain_safetensors(tmp_path):
    from safetensors.torch import save_file

    pt = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(1)}, pt)
    assert ck.read_metadata(pt) == {}
    plain = tmp_path / "p.safetensors"
    save_file({"a": torch.zeros(1)}, str(plain))
    assert ck.read_metadata(plain) == {}
    save_file({"a": torch.zeros(1)}, str(plain), metadata={"k": "v"})
    assert ck.read_metadata(str(plain)) == {"k": "v"}


def test_corrupted_safetensors_messages(tmp_path):
    """Unreadable header, and a readable header over missing data: both one exact prefix."""
    bad = _file(tmp_path, "bad.safetensors", b"garbage!")
    for fn in (ck.read_metadata, ck.read_state_dict):
        message = invkit_error(fn, bad)
        assert message.startswith(f"cannot read {bad}: corrupted or truncated safetensors "
                                  "file (")
        assert message.endswith(")") and "\n" not in message
    from safetensors.torch import save

    data = save({"a": torch.zeros(100)})
    cut = _file(tmp_path, "cut.safetensors", data[:-40])
    message = invkit_error(ck.read_state_dict, cut)
    assert message.startswith(f"cannot read {cut}: corrupted or truncated safetensors file (")


def test_read_state_dict_reads_safetensors_on_cpu(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "s.safetensors"
    save_file({"a": torch.arange(3.0)}, str(path))
    state = ck.read_state_dict(path)
    assert list(state) == ["a"] and torch.equal(state["a"], torch.arange(3.0))
    assert state["a"].device.type == "cpu"


class Custom:
    """Needs full unpickling."""

    def __init__(self):
        self.value = 1


def test_refusing_full_unpickling_names_the_class_exactly(tmp_path):
    path = tmp_path / "needs.pth"
    torch.save({"a": torch.ones(2), "extra": Custom()}, path)
    assert invkit_error(ck.read_state_dict, path) == (
        f"{path} needs full unpickling to load (it contains "
        f"{__name__}.Custom), which can run arbitrary code; if you trust this file, "
        "pass --trust-checkpoint (or convert it to safetensors)")
    state = ck.read_state_dict(path, trust=True)
    assert list(state) == ["a"] and torch.equal(state["a"], torch.ones(2))
    assert ck.read_state_dict(str(path), True).keys() == {"a"}


def test_unpickling_errors_that_are_not_refusals(tmp_path):
    """A bad pickle read with trust is 'corrupted or not a checkpoint'."""
    path = _file(tmp_path, "bad.pkl", pickle.dumps([1])[:2] + b"\xff\xff")
    message = invkit_error(ck.read_state_dict, path, trust=True)
    assert message.startswith(f"cannot read {path}: corrupted or not a checkpoint (")
    assert message.endswith(")")


def test_garbage_pickle_message(tmp_path):
    path = _file(tmp_path, "junk.pt", b"this is not a checkpoint at all" * 10)
    message = invkit_error(ck.read_state_dict, path)
    assert message.startswith(f"cannot read {path}: corrupted ")
    assert message.endswith(")")


def test_refused_global_parsing():
    """The refused name is the first word after the first marker, without trailing '.,'."""
    f = ck._refused_global
    assert f("Weights only load failed. Unsupported global: GLOBAL a.B was not an allowed "
             "global. Unsupported global: GLOBAL c.D x") == " (it contains a.B)"
    assert f("Unsupported global: x.Y, and more") == " (it contains x.Y)"
    assert f("Unsupported global: GLOBAL p.Q.") == " (it contains p.Q)"
    assert f("something else") == ""


def test_short_collapses_whitespace_and_cuts_at_the_limit():
    assert ck._short(ValueError("a \n b\t c")) == "a b c"
    assert ck._short(KeyError()) == "KeyError"
    assert ck._short(ValueError("x" * 160)) == "x" * 160
    assert ck._short(ValueError("x" * 161)) == "x" * 157 + "..."
    assert ck._short(ValueError("y" * 11), limit=10) == "y" * 7 + "..."
    assert ck._short(ValueError("y" * 10), limit=10) == "y" * 10


def test_extract_state_dict_every_nesting_key_in_order():
    a, b = torch.ones(1), torch.zeros(1)
    for key in ck.NESTED_KEYS:
        assert ck.extract_state_dict({key: {"w": a}, "epoch": 1}) == {"w": a}
    assert ck.extract_state_dict({"model": {"m": a}, "state_dict": {"s": b}}) == {"s": b}
    assert ck.extract_state_dict({"net": {"n": a}, "module": {"m": b}}) == {"m": b}
    # An empty or non-tensor nested entry is skipped; the bare dict is used.
    assert ck.extract_state_dict({"state_dict": {}, "w": a, "v": b}) == {"w": a, "v": b}
    got = ck.extract_state_dict({"state_dict": {"x": 1, "y": 2}, "w": a, "v": b})
    assert got == {"w": a, "v": b}
    # Non-tensors next to tensors (at most half) are dropped; keys become strings.
    assert ck.extract_state_dict({1: a, "note": "x"}) == {"1": a}
    assert ck.extract_state_dict({"model": {"w": a, "n": 3}}) == {"w": a}
    net = nn.Linear(2, 1)
    assert list(ck.extract_state_dict(net)) == ["weight", "bias"]
    assert list(ck.extract_state_dict({"module": net})) == ["weight", "bias"]


def test_extract_state_dict_errors():
    assert invkit_error(ck.extract_state_dict, [1, 2], "f.pth") == (
        "f.pth holds a list, not a state dict")
    assert invkit_error(ck.extract_state_dict, 3) == "checkpoint holds a int, not a state dict"
    assert invkit_error(ck.extract_state_dict, {}, "e.pt") == (
        "e.pt has no state dict (looked for a bare one and under state_dict/model; its keys: "
        "none)")
    keys = {f"k{i}": i for i in range(7)}
    assert invkit_error(ck.extract_state_dict, keys, "m.pt") == (
        "m.pt has no state dict (looked for a bare one and under state_dict/model; its keys: "
        "k0, k1, k2, k3, k4)")
    # Fewer than half tensors: not a state dict.
    assert invkit_error(ck.extract_state_dict, {"a": torch.ones(1), "b": 1, "c": 2}, "h") == (
        "h has no state dict (looked for a bare one and under state_dict/model; its keys: "
        "a, b, c)")


def test_mostly_tensors_boundaries():
    t = torch.ones(1)
    assert ck._mostly_tensors({"a": t, "b": 1})
    assert not ck._mostly_tensors({"a": t, "b": 1, "c": 2})
    assert ck._mostly_tensors({"a": t, "b": t, "c": 2})
    assert not ck._mostly_tensors({})
    assert not ck._mostly_tensors({"a": 1})


def test_strip_prefixes_rules():
    t = torch.ones(1)
    f = ck.strip_prefixes
    assert f({"module._orig_mod.fc.w": t}, {"fc.w"}) == {"fc.w": t}
    assert f({"wrap.fc.w": t, "wrap.fc.b": t}, {"fc.w", "fc.b"}) == {"fc.w": t, "fc.b": t}
    # An unknown prefix is only a candidate when at most 3 first names exist.
    four = {f"{p}.x": t for p in "abcd"}
    assert f(four, {"x"}) == four
    three = {"a.x": t, "b.y": t, "c.z": t}
    assert f(three, {"x"}) == {"x": t, "b.y": t, "c.z": t}
    # A strip that would merge two keys is refused.
    assert f({"module.a": t, "a": t}, {"a"}) == {"module.a": t, "a": t}
    # Nothing improves: unchanged; keys already expected are never touched.
    assert f({"module.a": t}, {"b"}) == {"module.a": t}
    assert f({"model.a": t, "model.b": t}, {"model.a", "b"}) == {"model.a": t, "b": t}


def test_strip_helpers():
    assert ck._strip_known("module._orig_mod.model.x") == "x"
    assert ck._strip_known("module.") == "module."
    assert ck._strip_known("module.net.") == "net."
    assert ck._strip_known("plain.x") == "plain.x"
    assert ck._strip_one("ab.")("ab.c") == "c"
    assert ck._strip_one("ab.")("xab.c") == "xab.c"
    t = torch.ones(1)
    assert ck._candidate_prefixes({"a.b.c": t, "d.e": t, "f": t}) == sorted(
        set(ck.KNOWN_PREFIXES) | {"a.", "d."})
    assert ck._candidate_prefixes({f"{p}.x": t for p in "abcd"}) == sorted(ck.KNOWN_PREFIXES)
    assert ck._candidate_prefixes({f"{p}.x": t for p in "abc"}) == sorted(
        set(ck.KNOWN_PREFIXES) | {"a.", "b.", "c."})


def test_names_lists_five_then_counts():
    assert ck._names(["e", "d", "c", "b", "a"]) == "a, b, c, d, e"
    assert ck._names(["f", "e", "d", "c", "b", "a"]) == "a, b, c, d, e and 1 more"
    assert ck._names(["b", "a", "c"], limit=2) == "a, b and 1 more"
    assert ck._names(["b", "a"], limit=2) == "a, b"


class Wide(nn.Module):
    def __init__(self, n=7):
        super().__init__()
        for i in range(n):
            setattr(self, f"l{i}", nn.Linear(1, 1))


def test_load_into_error_message_in_full():
    target = Wide()
    state = {f"l{i}.weight": torch.zeros(2, 1) for i in range(7)}
    state.update({f"l{i}.bias": torch.zeros(1) for i in range(6)})
    state.update({"x.a": torch.zeros(1)})
    shapes = "; ".join(f"l{i}.weight: file (2, 1) vs network (1, 1)" for i in range(5))
    assert invkit_error(ck.load_into, target, state, source="s.pth", arch="wide") == (
        f"weights s.pth do not fit wide: 7 with the wrong shape ({shapes} and 2 more); "
        f"1 missing (l6.bias); 1 unexpected (x.a)" + TAIL)


def test_load_into_five_wrong_shapes_and_default_arch():
    target = Wide(5)
    state = {k: torch.zeros(3) for k in target.state_dict()}
    message = invkit_error(ck.load_into, target, {k: v for k, v in state.items()
                                            if k.endswith("weight")}, source="f")
    assert message == ("weights f do not fit the network: 5 with the wrong shape ("
                       + "; ".join(f"l{i}.weight: file (3,) vs network (1, 1)"
                                   for i in range(5))
                       + "); 5 missing (l0.bias, l1.bias, l2.bias, l3.bias, l4.bias)" + TAIL)


def test_load_into_renames_and_fills_batchnorm_counters():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    net[1].num_batches_tracked.fill_(7)
    state = {"A.weight": torch.full((2, 2), 3.0), "A.bias": torch.ones(2),
             "B.weight": torch.ones(2) * 2, "B.bias": torch.zeros(2),
             "B.running_mean": torch.ones(2), "B.running_var": torch.ones(2) * 4}
    out = ck.load_into(net, state, source="s",
                       rename=lambda k: k.replace("A", "0").replace("B", "1"))
    assert out is net
    assert torch.equal(net[0].weight, torch.full((2, 2), 3.0))
    assert torch.equal(net[1].running_var, torch.ones(2) * 4)
    assert int(net[1].num_batches_tracked) == 7
    state["B.num_batches_tracked"] = torch.tensor(3)
    ck.load_into(net, {f"module.{k}": v for k, v in state.items()}, source="s",
                 rename=lambda k: k.replace("A", "0").replace("B", "1"))
    assert int(net[1].num_batches_tracked) == 3


def test_load_into_missing_counter_is_not_reported_but_other_missing_is():
    net = nn.Sequential(nn.BatchNorm1d(2))
    message = invkit_error(ck.load_into, net, {"0.weight": torch.ones(2)}, source="s", arch="a")
    assert message == ("weights s do not fit a: 3 missing (0.bias, 0.running_mean, "
                       "0.running_var)" + TAIL)


def test_apply_pruned_structure_resizes_each_layer_kind():
    net = nn.Sequential(nn.Conv2d(4, 8, 3, bias=True), nn.BatchNorm2d(8),
                        nn.Conv2d(8, 8, 1, bias=False), nn.Linear(8, 5),
                        nn.Linear(5, 3, bias=False), nn.BatchNorm1d(3, affine=False,
                                                                    track_running_stats=False))
    structure = {"0": {"type": "Conv2d", "in": 4, "out": 6},
                 "1": {"type": "BatchNorm2d", "in": 6, "out": 6},
                 "2": {"type": "Conv2d", "in": 6, "out": 4, "groups": 2},
                 "3": {"type": "Linear", "in": "4", "out": 2},
                 "4": {"type": "Linear", "in": 2, "out": 3},
                 "5": {"type": "BatchNorm1d", "in": 3, "out": 2}}
    out = ck.apply_pruned_structure(net, {"pruned": json.dumps(structure)}, source="p")
    assert out is net
    assert (net[0].in_channels, net[0].out_channels, net[0].groups) == (4, 6, 1)
    assert net[0].weight.shape == (6, 4, 3, 3) and net[0].bias.shape == (6,)
    assert net[1].num_features == 6 and net[1].weight.shape == (6,)
    assert net[1].bias.shape == (6,) and net[1].running_mean.shape == (6,)
    assert net[1].running_var.shape == (6,)
    assert (net[2].in_channels, net[2].out_channels, net[2].groups) == (6, 4, 2)
    assert net[2].weight.shape == (4, 3, 1, 1) and net[2].bias is None
    assert (net[3].in_features, net[3].out_features) == (4, 2)
    assert net[3].weight.shape == (2, 4) and net[3].bias.shape == (2,)
    assert net[4].weight.shape == (3, 2) and net[4].bias is None
    assert net[5].num_features == 2 and net[5].weight is None and net[5].running_mean is None
    assert all(isinstance(p, nn.Parameter) for p in net.parameters())
    assert ck.changed_layers(nn.Sequential(nn.Conv2d(4, 8, 3)), net)["0"] == {
        "type": "Conv2d", "in": 4, "out": 6, "groups": 1}


def test_apply_pruned_structure_without_key_or_metadata():
    net = nn.Linear(2, 2)
    weight = net.weight
    assert ck.apply_pruned_structure(net, None) is net
    assert ck.apply_pruned_structure(net, {}) is net
    assert ck.apply_pruned_structure(net, {"other": "{}"}) is net
    assert net.weight is weight


def test_apply_pruned_structure_errors():
    net = nn.Sequential(nn.Linear(2, 2))
    assert invkit_error(ck.apply_pruned_structure, net,
                  {"pruned": '{"9": {"type": "Linear", "in": 1, "out": 1}}'}, source="f") == (
        "f: its pruned structure does not fit the network (\"no layer '9' in the network\")")
    assert invkit_error(ck.apply_pruned_structure, net,
                  {"pruned": '{"0": {"type": "Conv2d", "in": 1, "out": 1}}'}) == (
        "checkpoint: its pruned structure does not fit the network (layer is a Linear, the "
        "file says Conv2d)")
    assert invkit_error(ck.apply_pruned_structure, net, {"pruned": '{"0": {"type": "Linear"}}'},
                  source="g") == "g: its pruned structure does not fit the network ('in')"
    message = invkit_error(ck.apply_pruned_structure, net, {"pruned": "not json"}, source="h")
    assert message.startswith("h: its pruned structure does not fit the network (Expecting ")


def test_changed_layers_and_layer_shapes():
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, groups=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Linear(8, 4))
    same = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Linear(8, 4))
    assert ck.changed_layers(ref, same) == {}
    other = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Linear(6, 4),
                          nn.Linear(4, 4))
    assert ck.changed_layers(ref, other) == {
        "0": {"type": "Conv2d", "in": 3, "out": 6, "groups": 1},
        "1": {"type": "BatchNorm2d", "in": 6, "out": 6},
        "3": {"type": "Linear", "in": 6, "out": 4},
        "4": {"type": "Linear", "in": 4, "out": 4}}
    assert ck._layer_shape(nn.Conv2d(4, 4, 1, groups=2))["groups"] == 2
    assert ck._layer_shape(nn.ReLU()) is None
    assert ck._device_of(nn.ReLU()) == torch.device("cpu")


def _meta(**kw):
    base = dict(arch="a", input_size=32, num_classes=2, mean=(0.5,), std=(0.25,),
                class_names=("x", "y"), weights="w", grayscale=True, family="f")
    base.update(kw)
    return TeacherMeta(**base)


def test_teacher_metadata_exact():
    assert ck.teacher_metadata(_meta(), {"note": "hi"}) == {
        "format": "invkit.teacher/1", "arch": "a", "input_size": "32", "num_classes": "2",
        "mean": "[0.5]", "std": "[0.25]", "class_names": '["x", "y"]', "grayscale": "true",
        "family": '"f"', "note": "hi"}
    plain = ck.teacher_metadata(_meta(class_names=None, grayscale=False, family=None))
    assert plain["class_names"] == "null" and plain["grayscale"] == "false"
    assert plain["family"] == "null" and "note" not in plain and len(plain) == 9


def test_meta_from_metadata_round_trip_and_fallbacks():
    meta = _meta()
    data = ck.teacher_metadata(meta)
    assert ck.meta_from_metadata(data, "s", weights="w") == meta
    old = {k: v for k, v in data.items() if k not in ("grayscale", "family")}
    got = ck.meta_from_metadata(old, "s", weights="z")
    assert (got.grayscale, got.family, got.weights) == (False, None, "z")
    fallback = _meta(family="fam")
    got = ck.meta_from_metadata(old, "s", weights="z", fallback=fallback)
    assert (got.grayscale, got.family) == (True, "fam")
    assert ck.meta_from_metadata(data, "s", "w", fallback=_meta(grayscale=False,
                                                                family="q")).family == "f"
    data["grayscale"], data["class_names"] = "false", "null"
    got = ck.meta_from_metadata(data, "s", "w", fallback=fallback)
    assert got.grayscale is False and got.class_names is None
    del data["class_names"]
    assert ck.meta_from_metadata(data, "s", "w").class_names is None
    assert ck.meta_from_metadata(ck.teacher_metadata(_meta(class_names=(1, 2))), "s",
                                 "w").class_names == ("1", "2")


def test_meta_from_metadata_incomplete_message():
    data = ck.teacher_metadata(_meta())
    del data["arch"]
    assert invkit_error(ck.meta_from_metadata, data, "f.safetensors", "w") == (
        "f.safetensors has incomplete invkit metadata ('arch'); pass --arch NAME to load it "
        "into a known network")
    data = ck.teacher_metadata(_meta())
    data["input_size"] = "big"
    assert invkit_error(ck.meta_from_metadata, data, "g", "w") == (
        "g has incomplete invkit metadata (invalid literal for int() with base 10: 'big'); "
        "pass --arch NAME to load it into a known network")


IMPLAUSIBLE = " (the file is damaged, or was not written by invkit)"


@pytest.mark.parametrize("change,problem", [
    ({"input_size": 0}, "input_size 0 (allowed 1..8192)"),
    ({"input_size": 8193}, "input_size 8193 (allowed 1..8192)"),
    ({"num_classes": 0, "class_names": None}, "num_classes 0 (allowed 1..1000000)"),
    ({"num_classes": 1_000_001, "class_names": None},
     "num_classes 1000001 (allowed 1..1000000)"),
    ({"num_classes": 3}, "2 class names for 3 classes"),
    ({"std": (0.0,)}, "mean [0.5] / std [0.0] (finite, std > 0)"),
    ({"mean": (float("nan"),)}, "mean [nan] / std [0.25] (finite, std > 0)"),
    ({"std": (float("inf"),)}, "mean [0.5] / std [inf] (finite, std > 0)"),
    ({"mean": (0.1, 0.2), "std": (1.0, 1.0)}, "2 mean and 2 std values (1 or 3 each)"),
    ({"mean": (0.1, 0.2, 0.3)}, "3 mean and 1 std values (1 or 3 each)"),
])
def test_implausible_metadata_each_problem(change, problem):
    data = ck.teacher_metadata(_meta(**change))
    assert invkit_error(ck.meta_from_metadata, data, "bad.st", "w") == (
        f"bad.st has implausible metadata: {problem}" + IMPLAUSIBLE)


@pytest.mark.parametrize("change", [
    {"input_size": 1}, {"input_size": 8192}, {"num_classes": 1, "class_names": None},
    {"num_classes": 1_000_000, "class_names": None},
    {"mean": (0.1, 0.2, 0.3), "std": (1.0, 2.0, 3.0)}, {"mean": (-1.0,), "std": (1e-9,)},
])
def test_plausible_metadata_at_the_limits(change):
    meta = _meta(**change)
    assert ck.meta_from_metadata(ck.teacher_metadata(meta), "ok", "w") == meta


def test_implausible_problems_are_joined():
    data = ck.teacher_metadata(_meta(input_size=0, num_classes=0, class_names=None))
    assert invkit_error(ck.meta_from_metadata, data, "b", "w") == (
        "b has implausible metadata: input_size 0 (allowed 1..8192); num_classes 0 (allowed "
        "1..1000000)" + IMPLAUSIBLE)


def test_has_teacher_metadata():
    assert ck.has_teacher_metadata({"format": "invkit.teacher/1", "arch": "a"})
    assert ck.has_teacher_metadata({"format": "invkit.teacher/9", "arch": "a"})
    assert not ck.has_teacher_metadata({"format": "invkit.teacher/1"})
    assert not ck.has_teacher_metadata({"arch": "a"})
    assert not ck.has_teacher_metadata({"format": "x-invkit.teacher/1", "arch": "a"})


def test_state_dict_bytes_round_trip():
    from safetensors import safe_open
    from safetensors.torch import load

    net = nn.Linear(2, 3)
    data = ck.state_dict_bytes(net, {"k": "v"})
    state = load(data)
    assert state.keys() == {"weight", "bias"}
    assert torch.equal(state["weight"], net.weight.detach())
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as handle:
        handle.write(data)
        handle.flush()
        with safe_open(handle.name, framework="pt") as f:
            assert f.metadata() == {"k": "v"}
