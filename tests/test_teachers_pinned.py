"""invkit.teachers (load/find/preview/save, factories, checkpoints) pinned exactly: each error
message in full, which arguments reach a plugin's factory, and the metadata each path yields."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import invkit.teachers as T
from invkit import hookimpl
from invkit.errors import unknown
from invkit.specs import Teacher, TeacherMeta, TeacherSpec
from invkit.teachers import checkpoint, digits
from tests.expect import invkit_error

NO_TEACHER = ("no teacher given: pass --teacher SPEC or --arch NAME (see 'invkit teachers "
              "list')")
NEEDS_FILE = "checkpoint: needs a file, e.g. --teacher checkpoint:model.pth"


CALLS: list[dict] = []


def tiny_teacher(weights=None, input_size=None, trust=None):
    """A recording factory that declares every optional parameter."""
    CALLS.append({"weights": weights, "input_size": input_size, "trust": trust})
    return Teacher(module=nn.Sequential(nn.Flatten(), nn.Linear(3, 4)),
                   meta=TeacherMeta(arch="t-full", input_size=input_size or 8, num_classes=4),
                   name="t-full")


def plain_factory(**kwargs):
    CALLS.append(kwargs)
    return nn.Linear(3, 4)


def conv_only(weights=None):
    return Teacher(module=nn.Conv2d(3, 4, 1),
                   meta=TeacherMeta(arch="t-conv", input_size=8, num_classes=4), name="t-conv")


class Plugin:
    @hookimpl
    def invkit_teachers(self):
        yield TeacherSpec("t-full", "full", factory=tiny_teacher, source="test", input_size=8,
                          num_classes=4)
        yield TeacherSpec("t-plain", "plain", factory=plain_factory, source="test",
                          input_size=8, num_classes=4, default_weights="dflt")
        yield TeacherSpec("t-nosize", "no size", factory=tiny_teacher, source="test")
        yield TeacherSpec("t-noclasses", "size only", factory=tiny_teacher, source="test",
                          input_size=8)
        yield TeacherSpec("t-nosize2", "classes only", factory=tiny_teacher, source="test",
                          num_classes=4)
        yield TeacherSpec("t-int", "int", factory=lambda weights=None: 3, source="test")
        yield TeacherSpec("t-file", "default file", factory=tiny_teacher, source="test",
                          input_size=8, num_classes=4, default_weights="nowhere/w.pth")
        yield TeacherSpec("t-conv", "conv", factory=conv_only, source="test", input_size=8,
                          num_classes=4)


@pytest.fixture
def plugin(register_plugin):
    CALLS.clear()
    register_plugin(Plugin(), "pinned-plugin")
    return CALLS


def test_missing_spec_and_checkpoint_argument_errors():
    assert invkit_error(T.load_teacher, None) == NO_TEACHER
    assert invkit_error(T.load_teacher, "") == NO_TEACHER
    assert invkit_error(T.find_teacher, None) == NO_TEACHER
    assert invkit_error(T.preview_teacher, None, None) == NO_TEACHER
    assert invkit_error(T.load_teacher, "checkpoint:") == NEEDS_FILE
    assert invkit_error(T.preview_teacher, "checkpoint:") == NEEDS_FILE
    assert invkit_error(T.preview_teacher, "checkpoint:.") == NEEDS_FILE
    assert invkit_error(T.load_teacher, "checkpoint:f.pth", weights="w.pth") == (
        "--weights w.pth cannot be combined with --teacher checkpoint:f.pth (the checkpoint "
        "is the weights)")
    assert invkit_error(T.load_teacher, "checkpoint:f.pth", input_size=16) == (
        "input size cannot be changed for --teacher checkpoint:PATH (the file holds the "
        "network for its own size)")
    assert invkit_error(T.load_teacher, "digits", arch="digits-vit") == (
        "--arch digits-vit only applies to --teacher checkpoint:PATH; to use digits-vit, pass "
        "it alone (or --teacher digits-vit)")


def test_arch_alone_or_equal_to_the_spec_loads_it():
    teacher = T.load_teacher(None, arch="digits", weights="none")
    assert teacher.name == "digits" and teacher.meta.arch == "digits"
    assert teacher.meta.weights == "none" and not teacher.module.training
    assert T.load_teacher("digits", arch="digits", weights="none").name == "digits"


def test_torchvision_prefix_accepts_the_bare_arch():
    teacher = T.load_teacher("torchvision:squeezenet1_1", arch="squeezenet1_1", weights="none")
    assert teacher.name == "torchvision:squeezenet1_1"
    assert teacher.meta.arch == "squeezenet1_1"


def test_device_errors_are_one_line():
    try:
        nn.Linear(1, 1).to("nope")
    except RuntimeError as error:
        torch_text = " ".join(str(error).split())
    assert len(torch_text) > 161
    assert invkit_error(T.load_teacher, "digits", weights="none", device="nope") == (
        f"cannot put teacher 'digits' on device 'nope': {torch_text[:160]}")


def test_load_teacher_moves_to_the_device_and_evaluates():
    teacher = T.load_teacher("digits", weights="none", device="meta")
    assert next(teacher.module.parameters()).device.type == "meta"
    assert not teacher.module.training


def test_find_teacher():
    assert T.find_teacher("digits").name == "digits"
    assert T.find_teacher(None, "digits-vit").name == "digits-vit"
    assert T.find_teacher("checkpoint:x.pth") is None
    assert T.find_teacher("checkpoint:x.pth", "digits-verifier").name == "digits-verifier"
    assert T.find_teacher("torchvision:resnet18").provider == "invkit.teachers"
    assert T.find_teacher("torchvision:resnet18").name == "resnet18"


def test_unknown_torchvision_name_lists_torchvision_names():
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    expected = unknown("teacher", "torchvision:resnet5O", [f"torchvision:{n}" for n in names])
    assert invkit_error(T.find_teacher, "torchvision:resnet5O") == str(expected)
    assert str(expected).startswith("unknown teacher 'torchvision:resnet5O'; did you mean: "
                                    "torchvision:resnet50")


def test_timm_record_has_batchnorm_and_the_builtin_provider():
    pytest.importorskip("timm", reason="timm is an optional extra")
    record = T.find_teacher("timm:resnet18")
    assert (record.name, record.provider, record.batchnorm) == ("timm:resnet18",
                                                                 "invkit.teachers", True)


def _save(tmp_path, name="d.safetensors", arch="digits", **meta_changes):
    teacher = T.load_teacher(arch)
    if meta_changes:
        import dataclasses

        teacher = dataclasses.replace(teacher, meta=dataclasses.replace(teacher.meta,
                                                                        **meta_changes))
    return T.save_teacher(teacher, tmp_path / name)


def test_preview_teacher_from_specs_and_files(tmp_path, plugin):
    meta = T.preview_teacher("digits")
    assert meta == TeacherMeta(arch="digits", input_size=32, num_classes=10, grayscale=True,
                               family="digits")
    path = _save(tmp_path, class_names=tuple("abcdefghij"))
    got = T.preview_teacher(f"checkpoint:{path}")
    assert got.class_names == tuple("abcdefghij") and got.weights == str(path)
    assert got.arch == "digits" and got.mean == digits.MEAN
    got = T.preview_teacher("digits-vit", weights=str(path))
    assert got.class_names == tuple("abcdefghij") and got.weights == str(path)
    assert T.preview_teacher(f"checkpoint:{path}", arch="digits-verifier").weights == str(path)
    # A plugin spec without size: built with random weights to find out.
    assert T.preview_teacher("t-nosize").input_size == 8
    assert plugin[-1]["weights"] == "none"
    for name in ("t-noclasses", "t-nosize2"):
        plugin.clear()
        got = T.preview_teacher(name)
        assert (got.input_size, got.num_classes, got.arch) == (8, 4, "t-full")
        assert plugin == [{"weights": "none", "input_size": None, "trust": None}]


def test_preview_teacher_ignores_weights_none_even_if_a_file_is_named_so(tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "none").write_bytes((5).to_bytes(8, "little") + b"{broken")
    assert T.preview_teacher("digits", weights="none").arch == "digits"
    assert T.preview_teacher("digits", weights="NONE").arch == "digits"


def test_preview_checkpoint_without_metadata_needs_arch(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(T.load_teacher("digits").module.state_dict(), path)
    message = (f"{path} does not say which network it holds: pass --arch NAME (e.g. --arch "
               "resnet50; see 'invkit teachers list')")
    assert invkit_error(T.preview_teacher, f"checkpoint:{path}") == message
    assert invkit_error(T.load_teacher, f"checkpoint:{path}") == message
    assert T.preview_teacher(f"checkpoint:{path}", arch="digits").weights == "none"


def test_preview_reports_implausible_metadata_with_the_path(tmp_path):
    path = _save(tmp_path, input_size=9000)
    assert invkit_error(T.preview_teacher, f"checkpoint:{path}") == (
        f"{path} has implausible metadata: input_size 9000 (allowed 1..8192) (the file is "
        "damaged, or was not written by invkit)")


def test_spec_has_batchnorm(tmp_path):
    assert T.spec_has_batchnorm("digits") is True
    assert T.spec_has_batchnorm("digits-vit") is False
    assert T.spec_has_batchnorm("checkpoint:x", "digits-verifier") is False
    path = _save(tmp_path, arch="digits-vit")
    assert T.spec_has_batchnorm(f"checkpoint:{path}") is False
    bare = tmp_path / "bare.pth"
    torch.save({"a": torch.ones(1)}, bare)
    assert T.spec_has_batchnorm(f"checkpoint:{bare}") is None


def test_has_batchnorm():
    assert T.has_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert T.has_batchnorm(nn.SyncBatchNorm(2))
    assert not T.has_batchnorm(nn.Sequential(nn.LayerNorm(2), nn.GroupNorm(1, 2)))


def test_factory_arguments(plugin):
    """Only what a factory declares reaches it; None weights are not passed at all."""
    teacher = T.load_teacher("t-plain")
    assert plugin[-1] == {}
    assert not teacher.module.training  # a plugin's module in training mode is put in eval
    assert not T.load_teacher("t-full").module.training
    T.load_teacher("t-plain", weights="abc", trust_checkpoint=True)
    assert plugin[-1] == {"weights": "abc"}
    teacher = T.load_teacher("t-plain", weights="abc")
    assert teacher.meta == TeacherMeta(arch="t-plain", input_size=8, num_classes=4,
                                       weights="abc")
    assert T.load_teacher("t-plain").meta.weights == "dflt"
    T.load_teacher("t-full", trust_checkpoint=True)
    assert plugin[-1] == {"weights": None, "input_size": None, "trust": True}
    T.load_teacher("t-full", weights="x", input_size=8)
    assert plugin[-1] == {"weights": "x", "input_size": None, "trust": None}
    teacher = T.load_teacher("t-full", input_size=16)
    assert plugin[-1] == {"weights": None, "input_size": 16, "trust": None}
    assert teacher.meta.input_size == 16 and teacher.name == "t-full"


def test_factory_errors(plugin):
    assert invkit_error(T.load_teacher, "t-plain", input_size=16) == (
        "teacher 't-plain' cannot be built for another input size (it takes 8 px)")
    assert invkit_error(T.load_teacher, "t-int") == (
        "teacher 't-int' (from plugin 'pinned-plugin') returned a int, not an invkit Teacher")
    assert invkit_error(T.load_teacher, "t-file") == (
        "t-file weights not found at nowhere/w.pth: put the file there "
        f"({(T.Path('nowhere/w.pth')).absolute()}), or pass --weights FILE (--weights none for "
        "random init)")


def test_resnet50v15_missing_default_has_its_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invkit_error(T.load_teacher, "resnet50v15") == (
        "resnet50v15 weights not found at ./models/resnet50v15/model_best.pth.tar: download "
        "NVIDIA's ResNet-50 v1.5 checkpoint (DeepLearningExamples, resnet50_pyt_amp on NGC) "
        f"and put it there ({tmp_path}/models/resnet50v15/model_best.pth.tar), or pass "
        "--weights FILE (--weights none for random init)")


def test_default_file_is_loaded_when_present(tmp_path, monkeypatch, plugin):
    monkeypatch.chdir(tmp_path)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(3, 4))
    (tmp_path / "nowhere").mkdir()
    torch.save(reference.state_dict(), tmp_path / "nowhere" / "w.pth")
    teacher = T.load_teacher("t-file")
    assert torch.equal(teacher.module[1].weight, reference[1].weight)
    assert teacher.meta.weights == "nowhere/w.pth" and teacher.meta.arch == "t-file"
    assert plugin[-1]["weights"] == "none"


def test_takes():
    assert T._takes(tiny_teacher, "trust") and not T._takes(conv_only, "trust")
    assert T._takes(max, "x") is False


def test_renamer():
    from invkit.teachers.cifar import rename_key

    assert T._renamer("cifar-resnet18") is rename_key
    assert T._renamer("cifar-resnet34") is rename_key
    assert T._renamer("digits") is None


def test_weights_file_without_metadata(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(T.load_teacher("digits").module.state_dict(), path)
    teacher = T.load_teacher("digits", weights=str(path))
    assert teacher.meta == digits.digits_meta("digits", str(path))
    assert teacher.name == "digits"


def test_checkpoint_metadata_is_the_truth(tmp_path):
    path = _save(tmp_path, class_names=tuple("abcdefghij"), arch="digits-verifier")
    teacher = T.load_teacher(f"checkpoint:{path}")
    assert teacher.meta.class_names == tuple("abcdefghij")
    assert teacher.meta.weights == str(path) and teacher.meta.arch == "digits-verifier"
    assert teacher.name == f"checkpoint:{path}"
    # Loaded into another arch name: the record's name wins (so save_teacher round-trips).
    teacher = T.load_teacher("digits-verifier", weights=str(path))
    assert teacher.meta.arch == "digits-verifier" and teacher.meta.class_names[0] == "a"


def test_checkpoint_naming_an_unknown_arch(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "alien.safetensors"
    save_file({"a": torch.ones(1)}, str(path), metadata={"format": "invkit.teacher/1",
                                                          "arch": "alien-net"})
    assert invkit_error(T.load_teacher, f"checkpoint:{path}") == (
        f"{path} holds a 'alien-net' network, which no installed plugin provides: install that "
        "plugin, or pass --arch NAME")


def test_checkpoint_naming_a_torchvision_arch_is_accepted(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tv.safetensors"
    save_file({"a": torch.ones(1)}, str(path), metadata={"format": "invkit.teacher/1",
                                                          "arch": "torchvision:nope"})
    assert invkit_error(T.load_teacher, f"checkpoint:{path}").startswith(
        "unknown teacher 'torchvision:nope'")


def test_checkpoint_saved_at_another_size_is_rebuilt_so(tmp_path, plugin):
    teacher = T.load_teacher("t-full", input_size=16)
    path = T.save_teacher(teacher, tmp_path / "t.safetensors")
    again = T.load_teacher(f"checkpoint:{path}")
    assert plugin[-1] == {"weights": "none", "input_size": 16, "trust": None}
    assert again.meta.input_size == 16
    same = T.save_teacher(T.load_teacher("t-full"), tmp_path / "s.safetensors")
    T.load_teacher(f"checkpoint:{same}", trust_checkpoint=True)
    # The file is read by invkit (trusted or not): the factory builds random weights only.
    assert plugin[-1] == {"weights": "none", "input_size": None, "trust": None}


def test_head_is_resized_to_the_saved_class_count(tmp_path):
    import dataclasses

    teacher = T.load_teacher("digits")
    from invkit.teachers import heads

    heads.set_submodule(teacher.module, "fc", heads.widen_linear(teacher.module.fc, 12))
    teacher = dataclasses.replace(teacher, meta=dataclasses.replace(
        teacher.meta, num_classes=12, class_names=tuple("abcdefghijkl")))
    path = T.save_teacher(teacher, tmp_path / "wide.safetensors")
    again = T.load_teacher(f"checkpoint:{path}")
    assert again.module.fc.out_features == 12 and again.meta.num_classes == 12
    assert torch.equal(again.module.fc.weight, teacher.module.fc.weight)


def test_head_that_cannot_be_resized(tmp_path, plugin):
    from safetensors.torch import save_file

    path = tmp_path / "c.safetensors"
    meta = TeacherMeta(arch="t-conv", input_size=8, num_classes=6)
    save_file({"weight": torch.ones(4, 3, 1, 1), "bias": torch.ones(4)}, str(path),
              metadata=checkpoint.teacher_metadata(meta))
    assert invkit_error(T.load_teacher, f"checkpoint:{path}") == (
        f"{path} holds 6 classes but 't-conv' builds 4, and its head cannot be resized: "
        "cannot find the classification head of this Conv2d: it has no nn.Linear layer (only "
        "a network ending in a linear classifier can be extended)")


def test_bad_class_count_in_metadata_is_reported_once(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "n.safetensors"
    data = checkpoint.teacher_metadata(T.load_teacher("digits").meta)
    data["num_classes"] = "ten"
    save_file(T.load_teacher("digits").module.state_dict(), str(path), metadata=data)
    assert invkit_error(T.load_teacher, "digits", weights=str(path)) == (
        f"{path} has incomplete invkit metadata (invalid literal for int() with base 10: "
        "'ten'); pass --arch NAME to load it into a known network")


def test_save_teacher_records_pruned_widths_and_extra(tmp_path):
    net = T.load_teacher("digits").module
    pruned = checkpoint.apply_pruned_structure(
        T.load_teacher("digits", weights="none").module,
        {"pruned": '{"conv1": {"type": "Conv2d", "in": 3, "out": 11, "groups": 1}}'})
    del net
    teacher = Teacher(module=pruned, meta=digits.digits_meta("digits", "x"), name="digits")
    path = T.save_teacher(teacher, str(tmp_path / "p.safetensors"), extra={"acc": "0.5"})
    assert path == tmp_path / "p.safetensors"
    metadata = checkpoint.read_metadata(path)
    assert json.loads(metadata["pruned"]) == {
        "conv1": {"type": "Conv2d", "in": 3, "out": 11, "groups": 1}}
    assert metadata["acc"] == "0.5"
    plain = checkpoint.read_metadata(_save(tmp_path, "q.safetensors"))
    assert "pruned" not in plain and set(plain) == {
        "format", "arch", "input_size", "num_classes", "mean", "std", "class_names",
        "grayscale", "family"}
    alien = Teacher(module=nn.Linear(1, 1), meta=TeacherMeta(arch="alien", input_size=1,
                                                             num_classes=1), name="alien")
    assert T._changed_widths(alien) == {}


def test_check_fits_messages():
    def meta(size, classes):
        return TeacherMeta(arch="x", input_size=size, num_classes=classes)

    tail = (" (choose a verifier with the teacher's classes and input size via "
            "--verifier-arch; see 'invkit teachers list')")
    T.check_fits(meta(32, 10), "t", meta(32, 10), "v")
    assert invkit_error(T.check_fits, meta(32, 10), "t", meta(64, 12), "v") == (
        "verifier 'v' does not fit teacher 't': it has 12 classes, the teacher 10" + tail)
    assert invkit_error(T.check_fits, meta(32, 10), "t", meta(64, 10), "v") == (
        "verifier 'v' does not fit teacher 't': its input size is 64 px, the teacher's 32 px"
        + tail)
    a = Teacher(module=nn.Identity(), meta=meta(32, 10), name="a")
    b = Teacher(module=nn.Identity(), meta=meta(32, 3), name="b")
    assert invkit_error(T.check_verifier, a, b) == (
        "verifier 'b' does not fit teacher 'a': it has 3 classes, the teacher 10" + tail)


def test_builtin_hook_order_and_public_names():
    import torchvision

    names = [s.name for s in T.invkit_teachers()]
    assert names[:6] == ["digits", "digits-verifier", "digits-vit", "cifar-resnet18",
                         "cifar-resnet34", "resnet50v15"]
    assert names[6:] == list(torchvision.models.list_models(module=torchvision.models))
    assert T.__all__ == ["load_teacher", "preview_teacher", "save_teacher", "check_verifier",
                         "find_teacher", "has_batchnorm", "spec_has_batchnorm",
                         "invkit_teachers"]
    assert (T.CHECKPOINT, T.TORCHVISION, T.TIMM) == ("checkpoint:", "torchvision:", "timm:")
