"""``invkit eval/distill/prune/extend`` pinned (h2's group): the exact settings each
command passes on, its default output paths, flip and learning-rate defaults, its output
lines, and the exact one-line errors of its output-directory checks.

The heavy parts (loading networks, training, pruning, evaluating) are replaced by
recorders, so each test runs the command's own code in-process in milliseconds.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import invkit.data
import invkit.distributed
import invkit.distill
import invkit.evaluate
import invkit.extend
import invkit.output
import invkit.prune
import invkit.teachers.heads
from invkit import commands
from invkit.distill import DistillConfig
from invkit.errors import InvkitError
from invkit.extend import ExtendConfig
from invkit.prune import PruneConfig


def _net(name, family="digits", size=32, classes=10):
    meta = SimpleNamespace(input_size=size, family=family, num_classes=classes)
    return SimpleNamespace(name=name, meta=meta, module=f"module-of-{name}")


@pytest.fixture
def rec(monkeypatch, tmp_path):
    """Recorders for every heavy call; the working directory is ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    calls: dict = {"load": [], "seed": []}

    def load(spec, arch=None, weights=None, trust_checkpoint=False, device="cpu"):
        calls["load"].append((spec, arch, weights, trust_checkpoint, device))
        return _net(f"net:{spec or arch}", family=calls.get("family", "digits"))

    def record(name, result=None):
        def fake(*args, **kwargs):
            calls.setdefault(name, []).append((args, kwargs))
            return result(*args, **kwargs) if callable(result) else result
        return fake

    monkeypatch.setattr(commands, "_load", load)
    monkeypatch.setattr(commands, "_seed_torch", lambda seed: calls["seed"].append(seed))
    monkeypatch.setattr(invkit.data, "GeneratedImages",
                        record("images", lambda *a, **k: list(range(5))))
    monkeypatch.setattr(invkit.data, "load_test_data", record("test", "TEST"))
    calls["record"] = record
    return calls


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("name, slug", [
    ("resnet18", "resnet18"), ("torchvision:resnet18", "torchvision_resnet18"),
    ("a b/c", "a_b_c"), ("__x__", "x"), ("a-b_c.d", "a-b_c.d"), ("///", "model"),
    ("", "model"), ("é1", "é1"), ("_a/", "a"),
])
def test_slug(name, slug):
    """Non-alphanumerics other than ``-_.`` become ``_``; outer ``_`` stripped; else model."""
    assert commands._slug(name) == slug


def test_prepare_creates_and_checks(tmp_path):
    """A new directory is created (parents too) and probed for writing."""
    out = tmp_path / "a" / "b"
    commands._prepare(out, False)
    assert out.is_dir() and list(out.iterdir()) == []
    commands._prepare(tmp_path / "c", False, create=False)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("names, taken", [
    (("student.safetensors", "distill.json"), "distill.json"),
    (("pruned.safetensors", "prune.json"), "prune.json"),
])
def test_prepare_refuses_a_previous_result(tmp_path, names, taken):
    """An existing result file is refused without --overwrite (the first one taken named)."""
    (tmp_path / taken).write_text("{}")
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(InvkitError) as err:
        commands._prepare(tmp_path, False, names=names)
    assert str(err.value) == (f"output directory {str(tmp_path)!r} already holds {taken}; "
                              "pass --overwrite to replace it or choose another --output")
    commands._prepare(tmp_path, True, names=names)
    (tmp_path / names[0]).write_text("{}")
    with pytest.raises(InvkitError) as err:
        commands._prepare(tmp_path, False, names=names, create=False)
    assert "already holds " + names[0] + ";" in str(err.value)


def test_prepare_default_names_and_other_files(tmp_path):
    """The default names are distill's; unrelated files do not count."""
    (tmp_path / "prune.json").write_text("{}")
    commands._prepare(tmp_path, False)
    (tmp_path / "student.safetensors").write_text("")
    with pytest.raises(InvkitError, match="already holds student.safetensors;"):
        commands._prepare(tmp_path, False)


def test_prepare_refuses_empty_and_file(tmp_path):
    """An empty path and a path that is a file: exact messages."""
    for empty in (Path(" "), Path("\t")):
        with pytest.raises(InvkitError) as err:
            commands._prepare(empty, False)
        assert str(err.value) == "the output path is empty: pass --output DIR"
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvkitError) as err:
        commands._prepare(tmp_path / "f", True)
    assert str(err.value) == (f"output path {str(tmp_path / 'f')!r} exists and is not a "
                              "directory")


def _unwritable(monkeypatch, error):
    def check(directory):
        raise error

    monkeypatch.setattr(invkit.output, "check_writable", check)


def test_writable_refusal_message(tmp_path, monkeypatch):
    """A directory that cannot be written: one line naming the file and the reason."""
    _unwritable(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(InvkitError) as err:
        commands._writable(tmp_path, "eval.json")
    assert str(err.value) == f"cannot write eval.json in {str(tmp_path)!r}: Permission denied"
    _unwritable(monkeypatch, OSError("no strerror"))
    with pytest.raises(InvkitError) as err:
        commands._writable(tmp_path, "x.json")
    assert str(err.value) == f"cannot write x.json in {str(tmp_path)!r}: no strerror"


def test_prepare_probes_with_its_first_name(tmp_path, monkeypatch):
    """``_prepare`` names its first file when the new directory is not writable."""
    _unwritable(monkeypatch, OSError(errno.EROFS, "Read-only file system"))
    with pytest.raises(InvkitError) as err:
        commands._prepare(tmp_path / "o", False, names=("w.safetensors", "r.json"))
    assert str(err.value) == (f"cannot write w.safetensors in {str(tmp_path / 'o')!r}: "
                              "Read-only file system")


def test_write_errors():
    """A failed write names the file (or, without one, the directory) and the reason."""
    with pytest.raises(InvkitError) as err:
        with commands._write_errors(Path("out")):
            raise OSError(errno.ENOSPC, "No space left on device", "out/a.png")
    assert str(err.value) == "cannot write to 'out/a.png': No space left on device"
    with pytest.raises(InvkitError) as err:
        with commands._write_errors(Path("out")):
            raise OSError("disk gone")
    assert str(err.value) == "cannot write to 'out': disk gone"
    with commands._write_errors(Path("out")):
        pass
    with pytest.raises(ValueError):
        with commands._write_errors(Path("out")):
            raise ValueError("not a write error")


@pytest.mark.parametrize("replay, no_distill, dirs", [
    (("a", "b"), False, [Path("a"), Path("b")]), (("none",), False, []),
    (("NONE",), False, []), ((), True, []), (("none",), True, []),
])
def test_replay_dirs(replay, no_distill, dirs):
    """``--replay``: directories, or ``none`` (any case) for none."""
    assert commands._replay_dirs(replay, no_distill) == dirs


@pytest.mark.parametrize("replay, no_distill, message", [
    (("none", "a"), False, "--replay none cannot be combined with replay directories"),
    (("a", "None"), True, "--replay none cannot be combined with replay directories"),
    (("a",), True, "--no-distill is plain fine-tuning on the new data only: drop --replay "
                   "(or pass --replay none)"),
    ((), False, "pass --replay DIR (images generated from the teacher) or --replay none "
                "(the LwF-only baseline)"),
])
def test_replay_dirs_refused(replay, no_distill, message):
    """Each contradictory ``--replay``/``--no-distill`` combination: its exact message."""
    with pytest.raises(InvkitError) as err:
        commands._replay_dirs(replay, no_distill)
    assert str(err.value) == message


def test_seed_torch_seeds_the_global_generator():
    """``_seed_torch`` makes the next global draw reproducible (students' init)."""
    state = torch.random.get_rng_state()
    try:
        commands._seed_torch(7)
        first = torch.rand(3)
        commands._seed_torch(7)
        assert torch.equal(torch.rand(3), first)
        commands._seed_torch(8)
        assert not torch.equal(torch.rand(3), first)
    finally:
        torch.random.set_rng_state(state)


def test_load_passes_everything(monkeypatch):
    """``_load`` hands spec, arch, weights, trust and device to ``load_teacher``."""
    import invkit.teachers

    seen = []
    monkeypatch.setattr(invkit.teachers, "load_teacher",
                        lambda spec, **kw: seen.append((spec, kw)) or "net")
    assert commands._load("s", arch="a", weights="w", trust_checkpoint=True,
                          device="cuda:1") == "net"
    assert commands._load("t") == "net"
    assert seen == [("s", dict(arch="a", weights="w", trust_checkpoint=True, device="cuda:1")),
                    ("t", dict(arch=None, weights=None, trust_checkpoint=False,
                               device="cpu"))]


# --------------------------------------------------------------------------- eval


@pytest.fixture
def eval_rec(rec, monkeypatch, tmp_path):
    (tmp_path / "gen" / "images" / "000_zero").mkdir(parents=True)
    report = {"top1": 0.875, "images": 16}
    monkeypatch.setattr(invkit.evaluate, "evaluate_dir", rec["record"]("evaluate", report))
    monkeypatch.setattr(invkit.evaluate, "per_class_table",
                        lambda report, title: f"TABLE {title}")
    rec["report"] = report
    return rec


def test_eval_command(invoke, eval_rec, monkeypatch):
    """Options reach the verifier (on the rank's device) and the evaluation; the table, then
    the summary line."""
    monkeypatch.setattr(invkit.distributed, "local_device", lambda d: f"local:{d}")
    result = invoke("eval", "gen", "--verifier-arch", "digits-verifier", "--verifier-weights",
                    "v.pt", "--trust-checkpoint", "--batch-size", "3", "--num-workers", "2",
                    "--device", "cuda:1")
    assert result.exit_code == 0, result.output
    assert eval_rec["load"] == [("digits-verifier", None, "v.pt", True, "local:cuda:1")]
    key = "digits-verifier weights=v.pt"
    (args, kwargs), = eval_rec["evaluate"]
    assert args[0] == Path("gen") and args[1].name == "net:digits-verifier"
    assert kwargs == {"batch_size": 3, "key": key, "num_workers": 2}
    assert result.output == (
        "TABLE net:digits-verifier on gen\n"
        f"net:digits-verifier: top-1 87.50% on 16 images (recorded under {key!r} in "
        f"{Path('gen') / 'eval.json'})\n")


def test_eval_quiet_defaults_and_top5(invoke, eval_rec):
    """Defaults (batch 256, no workers, key = spec); ``-q`` prints the summary alone."""
    eval_rec["report"]["top5"] = 0.99125
    result = invoke("eval", "gen", "--verifier_arch", "digits", "-q")
    assert result.exit_code == 0, result.output
    assert eval_rec["load"] == [("digits", None, None, False, "cpu")]
    assert eval_rec["evaluate"][0][1] == {"batch_size": 256, "key": "digits", "num_workers": 0}
    assert result.output == (
        "net:digits: top-1 87.50%, top-5 99.12% on 16 images (recorded under 'digits' in "
        f"{Path('gen') / 'eval.json'})\n")


def test_eval_errors(invoke, eval_rec, monkeypatch):
    """A missing directory fails before any network loads; an unwritable one, one line."""
    (Path("empty")).mkdir()
    result = invoke("eval", "empty", "--verifier-arch", "digits")
    assert (result.exit_code, result.output) == (
        2, "Error: data directory 'empty' holds no images: expected class sub-directories "
           "(ImageFolder), images/, or shards/*.safetensors\n")
    assert eval_rec["load"] == []
    result = invoke("eval", "gen")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: Missing option '--verifier-arch' / '--verifier_arch'.")
    _unwritable(monkeypatch, OSError(errno.EACCES, "Permission denied"))
    result = invoke("eval", "gen", "--verifier-arch", "digits")
    assert (result.exit_code, result.output) == (
        2, "Error: cannot write eval.json in 'gen': Permission denied\n")
    assert eval_rec["load"] == []


def test_eval_write_failure_is_one_line(invoke, eval_rec, monkeypatch):
    """A write failing during the evaluation: one ``Error:`` line naming the file."""
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "gen/eval.json")

    monkeypatch.setattr(invkit.evaluate, "evaluate_dir", fail)
    result = invoke("eval", "gen", "--verifier-arch", "digits")
    assert (result.exit_code, result.output) == (
        2, "Error: cannot write to 'gen/eval.json': No space left on device\n")


# --------------------------------------------------------------------------- distill


@pytest.fixture
def distill_rec(rec, monkeypatch):
    outcome = SimpleNamespace(final_test_acc=None, teacher_test_acc=None)
    monkeypatch.setattr(invkit.distill, "distill", rec["record"]("distill", outcome))
    monkeypatch.setattr(invkit.distill, "save_distilled",
                        rec["record"]("save", lambda r, out, t, extra: out / "s.safetensors"))
    rec["outcome"] = outcome
    return rec


def test_distill_defaults(invoke, distill_rec):
    """Defaults: SGD at 0.05, no flip for a digits teacher, student from random weights,
    output students/<student>-from-<teacher>; the config reaches ``distill`` whole."""
    result = invoke("distill", "--teacher", "digits", "--student", "tv:x y", "--data", "g")
    assert result.exit_code == 0, result.output
    assert distill_rec["load"] == [("digits", None, None, False, "cpu"),
                                   ("tv:x y", None, "none", False, "cpu")]
    assert distill_rec["seed"] == [0]
    (args, kwargs), = distill_rec["distill"]
    assert [a.name for a in args[:2]] == ["net:digits", "net:tv:x y"]
    assert args[2] == list(range(5)) and kwargs["test"] is None
    assert kwargs["config"] == DistillConfig(
        epochs=30, batch_size=64, lr=0.05, optimizer="sgd", weight_decay=5e-4,
        temperature=4.0, padding=None, flip=False, seed=0, device="cpu", num_workers=0)
    assert distill_rec["images"] == [(((Path("g"),),), {})]
    out = Path("students") / "net_tv_x_y-from-net_digits"
    assert out.is_dir()
    (args, kwargs), = distill_rec["save"]
    assert args[1] == out and args[2].name == "net:digits"
    assert kwargs == {"extra": {"data": ["g"], "images": 5, "test_data": None}}
    assert result.stderr == ("distilling net:digits -> net:tv:x y on 5 images from 1 dir(s), "
                             "30 epochs\n")
    assert result.stdout == (f"student saved to {out / 's.safetensors'} (use it as --teacher "
                             f"checkpoint:{out / 's.safetensors'})\n")


def test_distill_every_option(invoke, distill_rec, monkeypatch):
    """Every option given: each reaches its place (the device as this rank's); accuracies
    end the line."""
    monkeypatch.setattr(invkit.distributed, "local_device", lambda d: f"local:{d}")
    distill_rec["outcome"].final_test_acc = 0.5
    distill_rec["outcome"].teacher_test_acc = 0.96875
    result = invoke("distill", "--arch", "resnet", "--weights", "w", "--trust-checkpoint",
                    "--student", "checkpoint:s.pt", "--data", "g1", "--data", "g2",
                    "--test-data", "real", "-o", "out", "--epochs", "2", "--bs", "8",
                    "--lr", "0.5", "--optimizer", "adam", "--weight-decay", "0",
                    "-T", "2", "--padding", "0", "--seed", "3", "--num-workers", "1", "-q",
                    "--device", "cuda:1")
    assert result.exit_code == 0, result.output
    assert distill_rec["load"] == [(None, "resnet", "w", True, "local:cuda:1"),
                                   ("checkpoint:s.pt", None, None, False, "local:cuda:1")]
    assert distill_rec["seed"] == [3]
    assert distill_rec["distill"][0][1]["config"] == DistillConfig(
        epochs=2, batch_size=8, lr=0.5, optimizer="adam", weight_decay=0.0,
        temperature=2.0, padding=0, flip=True, seed=3, device="local:cuda:1",
        num_workers=1)
    assert distill_rec["images"] == [(((Path("g1"), Path("g2")),), {}),
                                     (("real",), {"size": 32})]
    assert distill_rec["distill"][0][1]["test"] == list(range(5))
    assert distill_rec["save"][0][1] == {"extra": {"data": ["g1", "g2"], "images": 5,
                                                   "test_data": "real"}}
    path = Path("out") / "s.safetensors"
    assert result.stdout == (f"student saved to {path} (use it as --teacher checkpoint:{path})"
                             "; test accuracy 50.00% (teacher 96.88%)\n")
    assert "from 2 dir(s), 2 epochs" in result.stderr


@pytest.mark.parametrize("args, lr, flip", [
    (["--optimizer", "adam"], 1e-3, False), (["--flip"], 0.05, True),
    (["--teacher", "cifar"], 0.05, True), (["--arch", "digits-x"], 0.05, False),
    (["--teacher", "xdigits"], 0.05, True),
])
def test_distill_lr_and_flip_defaults(invoke, distill_rec, args, lr, flip):
    """lr 0.001 for Adam else 0.05; flips off only for teachers named digits*."""
    if "--teacher" not in args and "--arch" not in args:
        args = ["--teacher", "digits", *args]
    result = invoke("distill", *args, "--student", "s", "--data", "g", "--test-data",
                    "digits")
    assert result.exit_code == 0, result.output
    config = distill_rec["distill"][0][1]["config"]
    assert (config.lr, config.flip) == (lr, flip)
    assert distill_rec["test"] == [(("digits",), {})]
    assert distill_rec["distill"][0][1]["test"] == "TEST"


def test_distill_refusals(invoke, distill_rec, tmp_path):
    """No teacher; a previous result without --overwrite; click's required options."""
    result = invoke("distill", "--student", "s", "--data", "g")
    assert (result.exit_code, result.output) == (
        2, "Error: no teacher given: pass --teacher SPEC (see 'invkit teachers list')\n")
    assert distill_rec["load"] == []
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "student.safetensors").write_text("")
    result = invoke("distill", "--teacher", "t", "--student", "s", "--data", "g", "-o", "o")
    assert (result.exit_code, result.output) == (
        2, "Error: output directory 'o' already holds student.safetensors; pass --overwrite "
           "to replace it or choose another --output\n")
    assert "distill" not in distill_rec
    result = invoke("distill", "--teacher", "t", "--student", "s", "--data", "g", "-o", "o",
                    "--overwrite")
    assert result.exit_code == 0, result.output
    for args, missing in ((["--data", "g"], "--student"), (["--student", "s"], "--data")):
        result = invoke("distill", "--teacher", "t", *args)
        assert result.exit_code == 2
        assert result.output.splitlines()[-1] == f"Error: Missing option '{missing}'."
    result = invoke("distill", "--teacher", "t", "--student", "s", "--data", "g", "-o", "")
    assert (result.exit_code, result.output) == (
        2, "Error: the output path is empty: pass --output DIR\n")


@pytest.mark.parametrize("args, message", [
    (["--lr", "0"], "Error: --lr=0.0 must be positive"),
    (["--weight-decay", "-1"], "Error: --weight-decay=-1.0 must be at least 0"),
    (["-T", "0"], "Error: --temperature=0.0 must be positive"),
    (["--epochs", "0"], "Error: Invalid value for '--epochs': 0 is not in the range x>=1."),
    (["--bs", "0"], "Error: Invalid value for '--batch-size' / '--bs': 0 is not in the range "
                    "x>=1."),
    (["--padding", "-1"], "Error: Invalid value for '--padding': -1 is not in the range x>=0."),
    (["--num-workers", "-1"],
     "Error: Invalid value for '--num-workers': -1 is not in the range x>=0."),
    (["--optimizer", "lion"],
     "Error: Invalid value for '--optimizer': 'lion' is not one of 'sgd', 'adam'."),
])
def test_distill_value_refusals(invoke, distill_rec, args, message):
    """Bounds of distill's numbers: the last line of the output, exit code 2."""
    result = invoke("distill", "--teacher", "t", "--student", "s", "--data", "g", *args)
    assert result.exit_code == 2 and result.output.splitlines()[-1] == message


def test_distill_save_failure_is_one_line(invoke, distill_rec, monkeypatch):
    """A failing save: one line naming the file."""
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "o/student.safetensors")

    monkeypatch.setattr(invkit.distill, "save_distilled", fail)
    result = invoke("distill", "--teacher", "t", "--student", "s", "--data", "g", "-o", "o")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: cannot write to 'o/student.safetensors': No space left on device")


# --------------------------------------------------------------------------- prune


@pytest.fixture
def prune_rec(rec, monkeypatch):
    outcome = SimpleNamespace(macs_before=400, macs_after=150, params_before=1000,
                              params_after=333, accuracy={})
    images = torch.zeros(6, 3, 4, 4)
    monkeypatch.setattr(invkit.prune, "require_torch_pruning", rec["record"]("require"))
    monkeypatch.setattr(invkit.prune, "check_data", rec["record"]("check"))
    monkeypatch.setattr(invkit.prune, "prune", rec["record"]("prune", outcome))
    monkeypatch.setattr(invkit.prune, "save_pruned",
                        rec["record"]("save", lambda r, out, extra: out / "p.safetensors"))
    monkeypatch.setattr(invkit.data, "load_image_dataset",
                        rec["record"]("dataset", (images, "TARGETS")))
    rec["outcome"], rec["images"] = outcome, images
    return rec


def test_prune_defaults(invoke, prune_rec):
    """Defaults reach PruneConfig; output pruned/<teacher>-<importance>; MACs/params line."""
    result = invoke("prune", "--teacher", "digits", "--data", "g", "--target-macs", "0.5")
    assert result.exit_code == 0, result.output
    assert prune_rec["require"] == [((), {})]
    assert prune_rec["dataset"] == [(((Path("g"),),), {})]
    assert prune_rec["load"] == [("digits", None, None, False, "cpu")]
    (args, kwargs), = prune_rec["check"]
    assert args[0].name == "net:digits" and args[1] is prune_rec["images"]
    assert args[2] == "TARGETS"
    (args, kwargs), = prune_rec["prune"]
    assert args[0].name == "net:digits" and args[1:] == (prune_rec["images"], "TARGETS")
    assert kwargs["test"] is None
    assert kwargs["config"] == PruneConfig(
        target_macs=0.5, amount=None, importance="taylor-kl", steps=4, step_epochs=1,
        finetune_epochs=20, finetune=DistillConfig(
            epochs=20, batch_size=64, lr=0.01, temperature=4.0, flip=False, seed=0,
            device="cpu"))
    out = Path("pruned") / "net_digits-taylor-kl"
    assert out.is_dir()
    (args, kwargs), = prune_rec["save"]
    assert args[1] == out and kwargs == {"extra": {
        "teacher": "net:digits", "data": ["g"], "images": 6, "test_data": None}}
    path = out / "p.safetensors"
    assert result.stdout == (f"pruned network saved to {path} (use it as --teacher "
                             f"checkpoint:{path}); MACs 37.5%, parameters 33.3% of the "
                             "teacher's\n")


def test_prune_every_option(invoke, prune_rec):
    """Every option given reaches PruneConfig, the loader and the test data."""
    prune_rec["outcome"].accuracy = {"before": 0.9, "pruned": None, "after": 0.8125}
    result = invoke("prune", "--arch", "cifar-net", "--weights", "w", "--trust-checkpoint",
                    "--data", "g1", "--data", "g2", "--amount", "0.3", "--importance",
                    "magnitude", "--steps", "2", "--step-epochs", "0", "--finetune-epochs",
                    "0", "--test-data", "real", "-o", "po", "--bs", "4", "--lr", "0.5",
                    "-T", "2", "--seed", "5", "--device", "cuda:1", "-q")
    assert result.exit_code == 0, result.output
    assert prune_rec["load"] == [(None, "cifar-net", "w", True, "cuda:1")]
    assert prune_rec["test"] == [(("real",), {"size": 32})]
    assert prune_rec["prune"][0][1]["test"] == "TEST"
    assert prune_rec["prune"][0][1]["config"] == PruneConfig(
        target_macs=None, amount=0.3, importance="magnitude", steps=2, step_epochs=0,
        finetune_epochs=0, finetune=DistillConfig(
            epochs=1, batch_size=4, lr=0.5, temperature=2.0, flip=True, seed=5,
            device="cuda:1"))
    assert prune_rec["save"][0][1]["extra"] == {
        "teacher": "net:cifar-net", "data": ["g1", "g2"], "images": 6, "test_data": "real"}
    assert result.stdout.endswith("of the teacher's; test accuracy before 90.00%, after "
                                  "81.25%\n")


@pytest.mark.parametrize("args, flip, epochs", [
    (["--teacher", "cifar"], True, 20), (["--teacher", "digits", "--flip"], True, 20),
    (["--arch", "digits"], False, 20), (["--teacher", "c", "--no-flip"], False, 20),
    (["--teacher", "c", "--finetune-epochs", "3"], True, 3),
    (["--teacher", "c", "--finetune-epochs", "1"], True, 1),
])
def test_prune_flip_and_epochs(invoke, prune_rec, args, flip, epochs):
    """Flips off for digits teachers; the fine-tune config runs at least one epoch."""
    result = invoke("prune", *args, "--data", "g", "--amount", "0.2")
    assert result.exit_code == 0, result.output
    config = prune_rec["prune"][0][1]["config"]
    assert (config.finetune.flip, config.finetune.epochs) == (flip, epochs)


def test_prune_refusals(invoke, prune_rec, tmp_path):
    """No teacher (before torch-pruning is needed); a previous result; bad numbers."""
    result = invoke("prune", "--data", "g", "--amount", "0.2")
    assert (result.exit_code, result.output) == (
        2, "Error: no teacher given: pass --teacher SPEC (see 'invkit teachers list')\n")
    assert "require" not in prune_rec
    (tmp_path / "po").mkdir()
    (tmp_path / "po" / "prune.json").write_text("{}")
    result = invoke("prune", "--teacher", "t", "--data", "g", "--amount", "0.2", "-o", "po")
    assert (result.exit_code, result.output) == (
        2, "Error: output directory 'po' already holds prune.json; pass --overwrite to "
           "replace it or choose another --output\n")
    assert "prune" not in prune_rec
    result = invoke("prune", "--teacher", "t", "--data", "g", "--amount", "0.2", "-o", "po",
                    "--overwrite")
    assert result.exit_code == 0
    for args, message in (
            (["--steps", "0"], "Invalid value for '--steps': 0 is not in the range x>=1."),
            (["--step-epochs", "-1"],
             "Invalid value for '--step-epochs': -1 is not in the range x>=0."),
            (["--importance", "random"], "Invalid value for '--importance': 'random' is not "
                                         "one of 'taylor-kl', 'magnitude'."),
            (["--lr", "-1"], "--lr=-1.0 must be positive"),
            (["--amount", "nan"], "--amount=nan is not a finite number")):
        result = invoke("prune", "--teacher", "t", "--data", "g", *args)
        assert result.exit_code == 2 and result.output.splitlines()[-1] == f"Error: {message}"


# --------------------------------------------------------------------------- extend


@pytest.fixture
def extend_rec(rec, monkeypatch):
    new = SimpleNamespace(names=["ant", "bee"], images=torch.zeros(7, 1))
    outcome = SimpleNamespace(final={})
    record = rec["record"]
    monkeypatch.setattr(invkit.teachers.heads, "find_head", record("head"))
    monkeypatch.setattr(invkit.extend, "load_new_classes", record("new", new))
    monkeypatch.setattr(invkit.extend, "load_replay", record("replay", torch.zeros(9, 1)))
    monkeypatch.setattr(invkit.extend, "combined_names", record("names", ["n"]))
    monkeypatch.setattr(invkit.extend, "load_extend_test", record("test", "ETEST"))
    monkeypatch.setattr(invkit.extend, "extend", record("extend", outcome))
    monkeypatch.setattr(invkit.extend, "save_extended",
                        record("save", lambda r, out, t, extra: out / "e.safetensors"))
    rec["new_set"], rec["outcome"] = new, outcome
    return rec


def test_extend_defaults(invoke, extend_rec):
    """Defaults reach ExtendConfig; replay images counted; the saved path's line."""
    result = invoke("extend", "--teacher", "digits", "--new-data", "nd", "--replay", "r",
                    "-o", "xo")
    assert result.exit_code == 0, result.output
    assert extend_rec["load"] == [("digits", None, None, False, "cpu")]
    assert extend_rec["seed"] == [0]
    assert extend_rec["head"][0][0][1:] == (10, None)
    assert extend_rec["head"][0][0][0] == "module-of-net:digits"
    assert extend_rec["new"][0][0][0] == Path("nd")
    assert extend_rec["replay"][0][0][0] == [Path("r")]
    (args, kwargs), = extend_rec["extend"]
    assert args[0].name == "net:digits" and args[1] is extend_rec["new_set"]
    assert args[2].shape == (9, 1) and kwargs["test"] is None
    assert kwargs["config"] == ExtendConfig(
        training=DistillConfig(epochs=20, batch_size=64, lr=3e-3, optimizer="sgd",
                               weight_decay=5e-4, temperature=1.0, padding=None, flip=False,
                               seed=0, device="cpu"),
        ce_weight=1.0, replay_weight=1.0, lwf_weight=1.0, distill=True,
        replay_batch_size=None, head=None, replay_softmax="all", replay_ce_weight=0.0,
        new_ce="all", backbone_lr_scale=1.0, head_ce_weight=0.0, align_head=False)
    assert Path("xo").is_dir()
    assert extend_rec["save"][0][1] == {"extra": {
        "new_data": "nd", "replay": ["r"], "new_images": 7, "replay_images": 9,
        "test_data": None}}
    assert result.stderr == ("extending net:digits (10 classes) by 2: ant, bee (7 images, "
                             "9 replay images), 20 epochs\n")
    path = Path("xo") / "e.safetensors"
    assert result.stdout == (f"extended network saved to {path} (use it as --teacher "
                             f"checkpoint:{path})\n")


def test_extend_every_option(invoke, extend_rec):
    """Every option given reaches its place; accuracies (all/old/new) end the line."""
    extend_rec["family"] = "cifar10"
    extend_rec["outcome"].final = {"test_acc": 0.5, "test_acc_old": None,
                                   "test_acc_new": 0.25}
    result = invoke(
        "extend", "--arch", "a", "--weights", "w", "--trust-checkpoint", "--new-data", "nd",
        "--replay", "none", "--test-data", "td", "-o", "xo", "--overwrite", "--epochs", "2",
        "--bs", "4", "--replay-batch-size", "3", "--ce-weight", "0.5", "--replay-weight",
        "0.25", "--lwf-weight", "0", "--replay-softmax", "old", "--replay-ce-weight", "2",
        "--new-ce", "new", "--backbone-lr-scale", "0", "--head-ce-weight", "1.5",
        "--align-head", "-T", "3", "--optimizer", "adam", "--weight-decay", "0.1",
        "--padding", "2", "--head", "fc", "--seed", "9", "--device", "cuda:1", "-q")
    assert result.exit_code == 0, result.output
    assert extend_rec["load"] == [(None, "a", "w", True, "cuda:1")]
    assert extend_rec["seed"] == [9] and "replay" not in extend_rec
    assert extend_rec["head"][0][0][1:] == (10, "fc")
    assert extend_rec["test"] == [(("td", ["n"]), {"size": 32})]
    (args, kwargs), = extend_rec["extend"]
    assert args[2] is None and kwargs["test"] == "ETEST"
    assert kwargs["config"] == ExtendConfig(
        training=DistillConfig(epochs=2, batch_size=4, lr=3e-4, optimizer="adam",
                               weight_decay=0.1, temperature=3.0, padding=2, flip=True,
                               seed=9, device="cuda:1"),
        ce_weight=0.5, replay_weight=0.25, lwf_weight=0.0, distill=True,
        replay_batch_size=3, head="fc", replay_softmax="old", replay_ce_weight=2.0,
        new_ce="new", backbone_lr_scale=0.0, head_ce_weight=1.5, align_head=True)
    assert extend_rec["save"][0][1]["extra"] == {
        "new_data": "nd", "replay": None, "new_images": 7, "replay_images": 0,
        "test_data": "td"}
    assert result.stderr == ("extending net:a (10 classes) by 2: ant, bee (7 images), "
                             "2 epochs\n")
    assert result.stdout.endswith("; test accuracy all 50.00%, new 25.00%\n")


def test_extend_no_distill_and_lr(invoke, extend_rec):
    """``--no-distill`` without replay; explicit ``--lr`` and ``--no-flip`` kept."""
    result = invoke("extend", "--teacher", "t", "--new-data", "nd", "-o", "xo", "--no-distill",
                    "--lr", "0.5", "--no-flip")
    assert result.exit_code == 0, result.output
    config = extend_rec["extend"][0][1]["config"]
    assert (config.distill, config.training.lr, config.training.flip) == (False, 0.5, False)


def test_extend_refusals(invoke, extend_rec, tmp_path):
    """No teacher; replay contradictions; a previous result, refused before loading."""
    base = ["--new-data", "nd", "-o", "xo"]
    result = invoke("extend", *base, "--replay", "r")
    assert (result.exit_code, result.output) == (
        2, "Error: no teacher given: pass --teacher SPEC (see 'invkit teachers list')\n")
    result = invoke("extend", "--teacher", "t", *base)
    assert (result.exit_code, result.output) == (
        2, "Error: pass --replay DIR (images generated from the teacher) or --replay none "
           "(the LwF-only baseline)\n")
    (tmp_path / "xo").mkdir()
    (tmp_path / "xo" / "extend.json").write_text("{}")
    result = invoke("extend", "--teacher", "t", *base, "--replay", "r")
    assert (result.exit_code, result.output) == (
        2, "Error: output directory 'xo' already holds extend.json; pass --overwrite to "
           "replace it or choose another --output\n")
    assert extend_rec["load"] == []
    result = invoke("extend", "--teacher", "t", "--new-data", "nd", "--replay", "r")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == "Error: Missing option '--output' / '-o'."


def test_extend_checks_head_before_output(invoke, extend_rec, monkeypatch):
    """A missing head is refused before the output directory is created."""
    def no_head(*args):
        raise InvkitError("no head")

    monkeypatch.setattr(invkit.teachers.heads, "find_head", no_head)
    result = invoke("extend", "--teacher", "t", "--new-data", "nd", "-o", "xo", "--replay", "r")
    assert (result.exit_code, result.output) == (2, "Error: no head\n")
    assert not os.path.exists("xo")


def test_commands_hook_adds_all_four():
    """The hook registers eval, distill, prune and extend under their names."""
    added = []
    commands.invkit_commands(SimpleNamespace(add_command=added.append))
    assert [c.name for c in added] == ["eval", "distill", "prune", "extend"]
