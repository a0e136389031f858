"""Issue 17: nothing executed, nothing lost, no traceback. One test (or a few) per class
of problem, each with inputs of that class rather than one example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from invkit.cli import make_cli
from invkit.errors import InvkitError


def cli(*args: str, env: dict | None = None):
    """Run the CLI in-process with exceptions caught: a traceback would show as one."""
    return CliRunner().invoke(make_cli(), list(args), env=env)


def assert_one_line_error(result, *words: str) -> str:
    """Exit 2, no traceback, and an ``Error:`` line containing every word."""
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line = next(x for x in result.output.splitlines() if x.startswith("Error:"))
    for word in words:
        assert word in line, line
    return line


# --- 1. nothing executed: every weights file loads with weights_only=True -------------------

class Plant:
    """A pickle that creates ``marker`` when unpickled (a stand-in for any code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _hub_file(tmp_path, monkeypatch) -> Path:
    from invkit.teachers import torchvision_models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("INVKIT_OFFLINE", "1")
    path = torchvision_models.cached_file(torchvision_models.weights_enum("resnet18").DEFAULT)
    path.parent.mkdir(parents=True)
    assert path.name == "resnet18-f37072fd.pth"
    return path


def test_a_pickle_in_the_hub_cache_is_not_executed_unless_trusted(tmp_path, monkeypatch):
    import torchvision

    from invkit.teachers import load_teacher

    path = _hub_file(tmp_path, monkeypatch)
    marker = tmp_path / "executed"
    state = torchvision.models.resnet18().state_dict()
    torch.save({"state_dict": state, "payload": Plant(marker)}, path)

    with pytest.raises(InvkitError) as refused:
        load_teacher("resnet18")
    assert not marker.exists()
    message = str(refused.value)
    assert "\n" not in message and "--trust-checkpoint" in message and path.name in message

    # Through the CLI (the verifier of `invkit eval`): one Error line, nothing run.
    images = tmp_path / "data" / "000"
    images.mkdir(parents=True)
    from invkit.output import save_png

    save_png(images / "a.png", torch.rand(3, 8, 8))
    result = cli("eval", str(tmp_path / "data"), "--verifier-arch", "resnet18", "-q")
    assert_one_line_error(result, "--trust-checkpoint")
    assert not marker.exists()

    # --trust-checkpoint is what allows full unpickling (and it reaches torchvision).
    teacher = load_teacher("resnet18", trust_checkpoint=True)
    assert marker.exists()
    assert torch.equal(teacher.module.fc.weight, state["fc.weight"])
    assert teacher.meta.weights == "ResNet18_Weights.IMAGENET1K_V1"


def test_a_safe_hub_cache_file_loads_with_torchvision_rules(tmp_path, monkeypatch):
    import torchvision

    from invkit.teachers import load_teacher

    path = _hub_file(tmp_path, monkeypatch)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    teacher = load_teacher("torchvision:resnet18")
    assert torch.equal(teacher.module.conv1.weight, state["conv1.weight"])
    assert teacher.meta.class_names[0] == "tench"


def test_every_trust_checkpoint_flag_defaults_to_off():
    def commands(group, prefix=()):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                yield from commands(command, (*prefix, name))
            else:
                yield (*prefix, name), command

    found = {}
    for path, command in commands(make_cli()):
        for param in command.params:
            if param.name == "trust_checkpoint":
                found[" ".join(path)] = (param.is_flag,
                                         param.get_default(click.Context(command)))
    assert {"eval", "distill", "run deepinversion"} <= set(found)
    assert set(found.values()) == {(True, False)}


# --- 2. nothing lost: --overwrite / --resume only touch an invkit run -----------------------

def _user_dir(path: Path) -> Path:
    """A directory a user made, laid out like a run (but never one)."""
    for name in ("images/000/photo.png", "progress/notes.txt", "manifest.jsonl"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("mine")
    return path


def _snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_overwrite_and_resume_refuse_a_directory_that_never_held_a_run(tmp_path):
    from invkit.output import prepare_output_dir

    out = _user_dir(tmp_path / "mine")
    before = _snapshot(out)
    for flags in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(InvkitError, match="holds no invkit run state") as refused:
            prepare_output_dir(out, **flags)
        assert "images" in str(refused.value)  # names some of what is there
        assert _snapshot(out) == before


def test_overwrite_refuses_a_run_directory_that_also_holds_other_files(tmp_path):
    from invkit.output import prepare_output_dir

    out = tmp_path / "run"
    (out / "state").mkdir(parents=True)
    (out / "state" / "run.json").write_text(json.dumps({"version": 1, "plan": "x"}))
    (out / "images").mkdir()
    (out / "thesis.tex").write_text("mine")
    (out / "data.csv").write_text("mine")
    with pytest.raises(InvkitError, match=r"data\.csv, thesis\.tex"):
        prepare_output_dir(out, overwrite=True)
    assert (out / "state" / "run.json").exists() and (out / "images").is_dir()
    (out / "thesis.tex").unlink()
    (out / "data.csv").unlink()
    (out / ".invkit.lock").write_text("")  # the lock is invkit's own, never content
    prepare_output_dir(out, overwrite=True)
    assert sorted(os.listdir(out)) == [".invkit.lock"]


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_output_path_is_refused(tmp_path, empty, monkeypatch):
    from invkit.lock import OutputLock
    from invkit.output import prepare_output_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InvkitError, match="output path is empty"):
        prepare_output_dir(empty, overwrite=True)
    with pytest.raises(InvkitError, match="output path is empty"):
        OutputLock(empty)
    result = cli("distill", "--teacher", "digits", "--student", "digits-verifier",
                 "--data", "x", "--output", empty)
    assert result.exit_code == 2 and "output path is empty" in result.output
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_run_command_overwrite_leaves_user_files_alone(tmp_path):
    """The whole command (--overwrite on a directory of user files): refused, intact."""
    out = _user_dir(tmp_path / "mine")
    before = _snapshot(out)
    result = cli("run", "deepinversion", "--teacher", "digits", "--iterations", "1", "--bs", "2",
                 "--quiet", "--output", str(out), "--overwrite")
    assert_one_line_error(result, "holds no invkit run state")
    assert _snapshot(out) == before


# --- 3. two runs on one directory: an exclusive lock ------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from invkit.lock import OutputLock
    with OutputLock(sys.argv[1], command="invkit run deepinversion --output x"):
        print("locked", flush=True)
        sys.stdin.read()          # hold until the parent closes stdin
""")


def _holder(directory: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    from invkit.lock import LOCK_NAME, OutputLock

    out = tmp_path / "run"
    process = _holder(out)
    try:
        with pytest.raises(InvkitError) as refused:
            OutputLock(out).acquire()
        message = str(refused.value)
        assert f"pid {process.pid}" in message
        assert "invkit run deepinversion --output x" in message and "in use" in message
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    # Released: the lock file is gone and the next run takes the directory.
    assert not (out / LOCK_NAME).exists()
    with OutputLock(out) as lock:
        assert lock.held and json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    from invkit.lock import LOCK_NAME, OutputLock

    out = tmp_path / "run"
    process = _holder(out)
    process.kill()  # SIGKILL: no cleanup runs, the file stays
    process.wait(timeout=60)
    process.stdin.close()
    process.stdout.close()
    assert (out / LOCK_NAME).exists()
    with OutputLock(out) as lock:
        assert lock.held


def test_the_holder_is_named_even_for_a_very_long_command_line(tmp_path):
    from invkit.lock import OutputLock

    command = "invkit run " + " ".join(f"mutant_{i}_\u00e9" for i in range(3000))
    lock = OutputLock(tmp_path / "out", command=command).acquire()
    try:
        with pytest.raises(InvkitError) as error:
            OutputLock(tmp_path / "out").acquire()
        message = str(error.value)
        assert f"(pid {os.getpid()} on host " in message
        assert "invkit run mutant_0_\u00e9 mutant_1_\u00e9" in message
    finally:
        lock.release()


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    from invkit.lock import OutputLock

    with OutputLock(tmp_path / "run"):
        with pytest.raises(InvkitError, match=f"pid {os.getpid()}"):
            OutputLock(tmp_path / "run").acquire()


# --- 4. non-finite and absurd numbers -----------------------------------------------------------

@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_non_finite_numbers_are_refused_everywhere(text):
    from invkit.cli.options import FiniteFloat
    from invkit.distill import DistillConfig
    from invkit.objective import build_objective, parse_prior, set_weight
    from invkit.specs import Option

    with pytest.raises(InvkitError, match="not a finite number"):
        FiniteFloat().convert(text, None, None)
    with pytest.raises(InvkitError, match="not a finite number"):
        Option("m", float, 1.0).parse(text)
    with pytest.raises(InvkitError, match="not a finite number"):
        build_objective([parse_prior(f"bn-stats:1,first_bn_multiplier={text}")])
    with pytest.raises(InvkitError, match="is not finite"):
        parse_prior(f"tv-l2:{text}")  # the weight
    with pytest.raises(InvkitError, match="not a finite number"):
        set_weight([], "bn-stats", float(text))
    for field in ("lr", "temperature", "weight_decay", "momentum", "grad_clip"):
        with pytest.raises(InvkitError, match=f"{field}=.* not a finite number"):
            DistillConfig(**{field: float(text)})


def test_distill_momentum_is_a_fraction():
    from invkit.distill import DistillConfig

    assert DistillConfig(momentum=1.0).momentum == 1.0 and DistillConfig(momentum=0).momentum == 0
    for bad in (1.5, -0.1):
        with pytest.raises(InvkitError, match="momentum"):
            DistillConfig(momentum=bad)


@pytest.mark.parametrize("args, words", [
    (("--temperature", "inf"), ("--temperature", "not a finite number")),
    (("-T", "0"), ("--temperature=0.0 must be positive",)),
    (("--lr", "nan"), ("--lr", "not a finite number")),
    (("--weight-decay", "-1"), ("--weight-decay", "at least 0")),
])
def test_distill_refuses_bad_numbers_before_any_work(tmp_path, args, words):
    result = cli("distill", "--teacher", "digits", "--student", "digits-verifier", "--data",
                 str(tmp_path / "missing"), "--output", str(tmp_path / "out"), *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert all(w in result.output for w in words), result.output
    assert not (tmp_path / "out").exists()


def test_run_refuses_non_finite_prior_options_and_weights():
    for args in (("--prior", "bn-stats:1,first_bn_multiplier=nan"), ("--r-feature", "nan"),
                 ("--tv-l2", "inf"), ("--prior", "tv-l1:-inf")):
        result = cli("run", "deepinversion", "--teacher", "digits", "--dry-run", *args)
        assert_one_line_error(result, "finite")


# --- 5. resources ---------------------------------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    """A 100-byte PNG claiming ``width`` x ``height`` pixels (almost none follow)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(100000, 100000), (9000, 9000), (70000, 1000)])
def test_eval_refuses_an_image_claiming_too_many_pixels(tmp_path, width, height):
    folder = tmp_path / "data" / "000"
    folder.mkdir(parents=True)
    (folder / "bomb.png").write_bytes(_png_header(width, height))
    result = cli("eval", str(tmp_path / "data"), "--verifier-arch", "digits-verifier", "-q")
    assert_one_line_error(result, "bomb.png", "pixels")


def test_a_checkpoint_claiming_absurd_metadata_is_refused(tmp_path):
    from invkit.teachers import load_teacher, save_teacher

    path = tmp_path / "digits.safetensors"
    save_teacher(load_teacher("digits"), path)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    for key, value in (("input_size", "100000"), ("num_classes", "1000000000"),
                       ("input_size", "0"), ("std", "[0, 1, 1]"), ("mean", "[NaN, 0, 0]")):
        save_file(tensors, str(path), metadata={**metadata, key: value})
        with pytest.raises(InvkitError, match="implausible metadata") as refused:
            load_teacher(f"checkpoint:{path}")
        assert key.split("_")[0] in str(refused.value)


def test_memory_estimates_refuse_with_estimate_and_limit():
    from invkit.resources import check_memory, estimate_inversion_bytes, format_bytes

    # 84 images, 3 x 224 x 224 values each, (8 copies + 64 activations) x 4 bytes.
    assert estimate_inversion_bytes(84, 3, 224) == 84 * 3 * 224 * 224 * 72 * 4
    assert estimate_inversion_bytes(1, 3, 32, model_bytes=10) == 3 * 32 * 32 * 288 + 10
    need = estimate_inversion_bytes(84, 3, 100000)
    with pytest.raises(InvkitError) as refused:
        check_memory(need, "--resolution 100000", available=64 * 10 ** 9)
    assert str(refused.value) == ("--resolution 100000 needs about 725.8 TB of memory but "
                                  "only 64.0 GB is available (given); lower the batch size or "
                                  "resolution")
    check_memory(estimate_inversion_bytes(84, 3, 224), "a batch", available=64 * 10 ** 9)
    # The machine's own figure: available RAM on the CPU.
    with pytest.raises(InvkitError, match=r"available \(RAM\)"):
        check_memory(need, "--resolution 100000", device="cpu")
    assert format_bytes(240e9) == "240.0 GB" and format_bytes(512) == "512 B"
    with pytest.raises(InvkitError, match="size=0"):
        estimate_inversion_bytes(1, 3, 0)


# --- 6. no traceback for what a user can cause -------------------------------------------------

@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "cpu:0", "cuda0", "tpu"])
def test_malformed_devices_name_the_valid_forms(device, tmp_path):
    from invkit.distributed import local_device

    with pytest.raises(InvkitError, match=r"valid: auto, cpu, cuda, cuda:N, mps"):
        local_device(device)
    result = cli("eval", str(tmp_path), "--verifier-arch", "digits", "--device", device)
    assert_one_line_error(result, "valid: auto, cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:99"])
def test_cuda_on_a_machine_without_it(monkeypatch, device):
    from invkit.distributed import local_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(InvkitError, match="CUDA is not available on this machine"):
        local_device(device)


def test_a_missing_cuda_index_names_the_devices_there(monkeypatch):
    from invkit.distributed import local_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InvkitError, match=r"has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        local_device("cuda:99")


def test_unwritable_output_locations_are_one_line(tmp_path):
    from invkit.output import prepare_output_dir

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(InvkitError, match="cannot write to output directory"):
        prepare_output_dir(blocker / "run")
    # distill: its output under a file.
    data = tmp_path / "data" / "images" / "000"
    data.mkdir(parents=True)
    from invkit.output import save_png

    for i in range(2):
        save_png(data / f"{i}.png", torch.rand(3, 32, 32))
    result = cli("distill", "--teacher", "digits", "--student", "digits-verifier", "--data",
                 str(tmp_path / "data"), "--epochs", "1", "--quiet",
                 "--output", str(blocker / "students"))
    assert_one_line_error(result, "cannot create output directory")
    # eval: its report cannot be written (eval.json is in the way).
    (tmp_path / "data" / "eval.json").mkdir()
    (tmp_path / "data" / "eval.json" / "x").write_text("")
    result = cli("eval", str(tmp_path / "data"), "--verifier-arch", "digits-verifier", "-q")
    assert_one_line_error(result, "cannot write to", "eval.json")


def test_a_plugin_prior_that_raises_is_one_line(register_plugin):
    from invkit import PriorSpec, hookimpl
    from invkit.objective import build_objective, parse_prior

    def explode(**_):
        raise ZeroDivisionError("division by zero in the plugin")

    class Broken:
        @hookimpl
        def invkit_priors(self):
            yield PriorSpec("exploding", "raises when built", factory=explode)

    register_plugin(Broken(), "broken-prior-plugin")
    with pytest.raises(InvkitError) as refused:
        build_objective([parse_prior("exploding")])
    assert str(refused.value) == ("prior 'exploding' (from plugin 'broken-prior-plugin') "
                                  "failed to build: ZeroDivisionError: division by zero in "
                                  "the plugin")
    result = cli("run", "deepinversion", "--teacher", "digits", "--prior", "exploding",
                 "--dry-run")
    assert_one_line_error(result, "exploding", "broken-prior-plugin")


class BrokenEntryPoint:
    """An installed ``invkit`` entry point whose module fails to import."""

    name, dist = "broken-one", None

    def load(self):
        raise ImportError("needs libfoo")


def test_strict_plugins_give_a_clean_error_naming_the_plugin(monkeypatch, capsys):
    from invkit import plugins
    from invkit.cli import main

    real = plugins.entry_points

    def entry_points(group):
        return [BrokenEntryPoint()] if group == plugins.ENTRYPOINT_GROUP else real(group)

    monkeypatch.setattr(plugins, "entry_points", entry_points)

    def run(*args: str) -> tuple[int, str]:
        plugins.get_plugin_manager.cache_clear()  # load the entry points again
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        return exited.value.code, capsys.readouterr().err

    try:
        monkeypatch.setenv("INVKIT_STRICT_PLUGINS", "1")
        code, err = run("priors", "list")
        assert code == 2 and err.splitlines() == [
            "Error: plugin 'broken-one' failed to load: ImportError: needs libfoo "
            "(INVKIT_STRICT_PLUGINS is set)"]
        monkeypatch.delenv("INVKIT_STRICT_PLUGINS")
        code, err = run("priors", "list", "--json")
        assert code == 0 and err.splitlines() == [
            "Warning: plugin 'broken-one' failed to load: ImportError: needs libfoo"]
        # With entry points off the broken one is never loaded, even when strict.
        monkeypatch.setenv("INVKIT_STRICT_PLUGINS", "1")
        monkeypatch.setenv("INVKIT_NO_ENTRYPOINTS", "1")
        code, err = run("priors", "list", "--json")
        assert code == 0 and err == ""
    finally:
        plugins.get_plugin_manager.cache_clear()


# --- 7. small truths ------------------------------------------------------------------------------

def test_messages_name_only_options_that_exist(tmp_path):
    from invkit.output import save_png

    folder = tmp_path / "data" / "000"
    folder.mkdir(parents=True)
    save_png(folder / "a.png", torch.rand(3, 8, 8))
    save_png(folder / "b.png", torch.rand(3, 9, 9))
    result = cli("eval", str(tmp_path / "data"), "--verifier-arch", "digits-verifier", "-q")
    line = assert_one_line_error(result, "different sizes")
    eval_options = {opt for p in make_cli().commands["eval"].params for opt in p.opts}
    named = {word.strip(".,;:()") for word in line.split() if word.startswith("-")}
    assert named <= eval_options and "pass a size" not in line


def test_distill_data_that_is_a_file_says_so(tmp_path):
    (tmp_path / "images.zip").write_bytes(b"PK")
    result = cli("distill", "--teacher", "digits", "--student", "digits-verifier",
                 "--data", str(tmp_path / "images.zip"))
    assert_one_line_error(result, "is a file, not a directory")


def test_no_entrypoints_keeps_the_bundled_deepinversion_once():
    # A fresh process: the plugin manager is built once per process from the environment.
    code = ("from invkit.plugins import get_plugin_manager, load_entrypoints; "
            "from invkit.registry import registry; "
            "import invkit_plugins.deepinversion as di; pm = get_plugin_manager(); "
            "load_entrypoints(pm); "  # entry points loaded later still do not add it twice
            "print(sorted(n for n, p in pm.list_name_plugin() if p is di), "
            "registry('method').names())")
    env = {**os.environ, "INVKIT_NO_ENTRYPOINTS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("['deepinversion'] [")
    assert "'deepinversion'" in out.stdout.split("] ", 1)[1]


@pytest.mark.parametrize("flag, value, words", [
    ("--format", "gif", ("'gif' is not one of 'png', 'safetensors'",)),
    ("--setting-id", "3", ("'3' is not one of '0', '1', '2'",)),
])
def test_choice_options_refuse_other_values(tmp_path, flag, value, words):
    result = cli("run", "deepinversion", "--teacher", "digits", flag, value, "--dry-run",
                 "--output", str(tmp_path / "never"))
    assert_one_line_error(result, *words)
    assert not (tmp_path / "never").exists()
