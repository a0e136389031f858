"""``invkit run METHOD`` pinned (h2's group): every option's value reaches the
:class:`RunRequest` and the method's options exactly, the refused combinations give their
exact one-line errors, ``--dry-run`` prints the resolved run and a real run prints its
summary line.

``resolve_run`` and ``execute`` are replaced by recorders, so no network is loaded: what is
pinned is the CLI's side of the contract, field by field.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import invkit.distributed
import invkit.history
import invkit.pipeline
import invkit.pipeline.execute
from invkit.cli import run as run_cli
from invkit.errors import InvkitError
from invkit.hookspecs import hookimpl
from invkit.methods import option
from invkit.objective import parse_prior
from invkit.pipeline import RunRequest
from invkit.registry import registry
from invkit.specs import MethodSpec, Preset, PriorFlag
from tests.golden import assert_golden


class FakeRun:
    """What ``resolve_run`` returns: a described run with an output directory."""

    output = Path("out/dir")

    def describe(self):
        return ["objective: x", "plan: y"]


@pytest.fixture
def recorder(monkeypatch):
    """Record the request/options reaching ``resolve_run`` and the calls after it."""
    calls = {"resolve": [], "execute": [], "shutdown": 0, "tensorboard": 0, "main": True}
    run = FakeRun()

    def resolve_run(request, options, spec=None):
        calls["resolve"].append((request, options, spec))
        return run

    def execute(resolved):
        calls["execute"].append(resolved)
        return {"num_images": 8, "teacher_accuracy": 0.5, "verifier_accuracy": None}

    def shutdown():
        calls["shutdown"] += 1

    def require_tensorboard():
        calls["tensorboard"] += 1

    monkeypatch.setattr(invkit.pipeline, "resolve_run", resolve_run)
    monkeypatch.setattr(invkit.pipeline.execute, "execute", execute)
    monkeypatch.setattr(invkit.distributed, "is_main_process", lambda: calls["main"])
    monkeypatch.setattr(invkit.distributed, "shutdown_distributed", shutdown)
    monkeypatch.setattr(invkit.history, "require_tensorboard", require_tensorboard)
    calls["run"] = run
    return calls


# --------------------------------------------------------------------------- --targets


@pytest.mark.parametrize("text, expected", [
    (None, None), ("3", (3,)), ("1, 2,3", (1, 2, 3)), ("1,,2,", (1, 2)), (" 0 , 9 ", (0, 9)),
    ("-1", (-1,)), ("1, ,2", (1, 2)),
])
def test_targets_parsed(text, expected):
    """Spaces are ignored, empty items skipped, order and repeats kept."""
    assert run_cli._targets(None, None, text) == expected


@pytest.mark.parametrize("text", ["", ",", " , ", "a", "1,b", "1.5", "1;2", "1 2", "1, 2 3"])
def test_targets_refused_exactly(text):
    """An empty or non-integer list is one exact error naming the value; so is a
    space-separated one ("1 2" was once read as class 12)."""
    with pytest.raises(InvkitError) as err:
        run_cli._targets(None, None, text)
    assert str(err.value) == (f"--targets {text!r} is not a comma-separated list of class "
                              "indices, e.g. 1,2,3")


def test_targets_error_through_the_cli(invoke, recorder):
    """The CLI shows it as one ``Error:`` line, exit code 2, before resolving anything."""
    result = invoke("run", "deepinversion", "--teacher", "digits", "--targets", "x")
    assert (result.exit_code, result.output) == (
        2, "Error: --targets 'x' is not a comma-separated list of class indices, e.g. 1,2,3\n")
    assert recorder["resolve"] == []


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("args, message", [
    (["--fp16", "--bf16"], "--fp16 and --bf16 cannot be used together: choose one"),
    (["--num-batches", "2", "--images-per-class", "3"],
     "give --num-batches or --images-per-class, not both"),
    (["--resume", "--overwrite"],
     "--overwrite and --resume cannot be used together: choose one"),
    (["--fp16", "--bf16", "--resume", "--overwrite"],
     "--fp16 and --bf16 cannot be used together: choose one"),
    (["--num-batches", "2", "--images-per-class", "3", "--resume", "--overwrite"],
     "give --num-batches or --images-per-class, not both"),
    (["--output", ""], "the output path is empty: pass --output DIR"),
    (["-o", " "], "the output path is empty: pass --output DIR"),
    (["--l2", "nan"], "--l2=nan is not a finite number"),
    (["--r-feature", "inf"], "--r-feature=inf is not a finite number"),
    (["--r_feature", "x"], "--r-feature=x is not a number"),
    (["--main-loss-multiplier", "1e999"], "--main-loss-multiplier=inf is not a finite number"),
    (["--lr", "-inf"], "--lr=-inf is not a finite number"),
])
def test_refused_combinations_and_values(invoke, recorder, args, message):
    """Each refusal is exactly one ``Error:`` line and exit code 2; nothing is resolved."""
    result = invoke("run", "deepinversion", "--teacher", "digits", *args)
    assert (result.exit_code, result.output) == (2, f"Error: {message}\n")
    assert recorder["resolve"] == [] and recorder["tensorboard"] == 0


@pytest.mark.parametrize("args, message", [
    (["--bs", "0"], "Invalid value for '--bs' / '--batch-size': 0 is not in the range x>=1."),
    (["--num-batches", "0"], "Invalid value for '--num-batches': 0 is not in the range x>=1."),
    (["--images-per-class", "0"],
     "Invalid value for '--images-per-class': 0 is not in the range x>=1."),
    (["--shard-size", "0"], "Invalid value for '--shard-size': 0 is not in the range x>=1."),
    (["--save-every", "0"], "Invalid value for '--save-every': 0 is not in the range x>=1."),
    (["--threads", "0"], "Invalid value for '--threads': 0 is not in the range x>=1."),
    (["--format", "jpg"],
     "Invalid value for '--format': 'jpg' is not one of 'png', 'safetensors'."),
    (["--seed", "x"], "Invalid value for '--seed': 'x' is not a valid integer."),
    (["--preset", "mnist"],
     "Invalid value for '--preset': 'mnist' is not one of 'imagenet', 'cifar10', 'digits'."),
    (["--setting-id", "3"], "Invalid value for '--setting-id' / '--setting_id': '3' is not "
                            "one of '0', '1', '2'."),
    (["--output", "f.txt"],
     "Invalid value for '--output' / '-o': Directory 'f.txt' is a file."),
])
def test_click_usage_errors(invoke, recorder, tmp_path, monkeypatch, args, message):
    """Out-of-range and malformed values: click's usage error, last line exact, exit 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    result = invoke("run", "deepinversion", "--teacher", "digits", *args)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: {message}"
    assert recorder["resolve"] == []


def test_limits_accepted(invoke, recorder):
    """The value at each limit is accepted (1 for every count)."""
    result = invoke("run", "deepinversion", "--teacher", "digits", "--bs", "1",
                    "--num-batches", "1", "--shard-size", "1", "--save-every", "1",
                    "--threads", "1", "--dry-run")
    assert result.exit_code == 0, result.output
    request = recorder["resolve"][0][0]
    assert (request.bs, request.num_batches, request.shard_size, request.save_every,
            request.threads) == (1, 1, 1, 1, 1)
    result = invoke("run", "deepinversion", "--teacher", "digits", "--images-per-class", "1",
                    "--dry-run")
    assert result.exit_code == 0 and recorder["resolve"][1][0].images_per_class == 1


def test_unknown_method_is_one_error(invoke):
    """An unknown method name: the ``unknown`` error with the valid names, exit 2."""
    result = invoke("run", "deepinversoin", "--teacher", "digits")
    assert (result.exit_code, result.output) == (
        2, "Error: unknown method 'deepinversoin'; did you mean: deepinversion? "
           "(valid: deepinversion, fast, pii)\n")


# --------------------------------------------------------------------------- the request


def test_defaults_reach_the_request(invoke, recorder):
    """No option given: the request is RunRequest's defaults (method and teacher aside)."""
    result = invoke("run", "deepinversion", "--teacher", "digits", "--dry-run")
    assert (result.exit_code, result.output) == (0, "objective: x\nplan: y\n")
    request, options, spec = recorder["resolve"][0]
    assert request == RunRequest(method="deepinversion", teacher="digits")
    assert spec == registry("method").get("deepinversion")
    assert options == spec.options()
    assert recorder["execute"] == [] and recorder["shutdown"] == 0
    assert recorder["tensorboard"] == 0


def test_every_option_reaches_the_request(invoke, recorder):
    """Every shared option, given a non-default value, lands in its own request field."""
    result = invoke(
        "run", "deepinversion", "--teacher", "checkpoint:t.pt", "--arch-name", "digits",
        "--weights", "w.safetensors", "--trust-checkpoint",
        "--prior", "tv-l2:0.5", "--prior", "l2,foo=1", "--no-default-priors",
        "--preset", "digits", "--batch-size", "7", "--targets", "4,5", "--random_label",
        "--num-batches", "3", "--seed", "11", "--device", "cpu:0", "--bf16",
        "--exp_name", "exp", "-o", "gen/out", "--format", "safetensors", "--shard-size", "9",
        "--overwrite", "--verifier", "--verifier_arch", "digits-verifier",
        "--verifier-weights", "v.pt", "--student", "stu", "--save-every", "13", "-q",
        "--threads", "2", "--tensorboard", "--r-feature", "0.25", "--l2", "0",
        "--dry-run")
    assert result.exit_code == 0, result.output
    request, options, _ = recorder["resolve"][0]
    assert request == RunRequest(
        method="deepinversion", teacher="checkpoint:t.pt", arch="digits",
        weights="w.safetensors", trust_checkpoint=True,
        priors=(parse_prior("tv-l2:0.5"), parse_prior("l2,foo=1")), no_default_priors=True,
        prior_flags=(("r_feature", 0.25), ("l2", 0.0)), preset="digits", bs=7,
        targets=(4, 5), random_label=True, num_batches=3, images_per_class=None, seed=11,
        device="cpu:0", precision="bf16", output="gen/out", exp_name="exp",
        format="safetensors", shard_size=9, resume=False, overwrite=True, verifier=True,
        verifier_arch="digits-verifier", verifier_weights="v.pt", student="stu",
        save_every=13, quiet=True, tensorboard=True, threads=2)
    assert isinstance(request.output, str) and isinstance(request.prior_flags[1][1], float)
    assert recorder["tensorboard"] == 1


def test_second_spellings_and_resume(invoke, recorder):
    """``--arch``, ``--bs``, ``--random-label``, ``--exp-name``, ``--output``,
    ``--verifier-arch``, ``--quiet``, ``--resume``, ``--fp16`` and ``--images-per-class``."""
    result = invoke("run", "deepinversion", "--teacher", "digits", "--arch", "a", "--bs", "2",
                    "--random-label", "--exp-name", "e", "--output", "o", "--verifier-arch",
                    "v", "--quiet", "--resume", "--fp16", "--images-per-class", "4",
                    "--dry-run")
    assert result.exit_code == 0, result.output
    request = recorder["resolve"][0][0]
    assert request == RunRequest(
        method="deepinversion", teacher="digits", arch="a", bs=2, random_label=True,
        exp_name="e", output="o", verifier_arch="v", quiet=True, resume=True,
        precision="fp16", images_per_class=4)


def test_method_options_reach_the_options(invoke, recorder):
    """DeepInversion's own options arrive typed: ``--setting-id 2`` is the int 2."""
    result = invoke("run", "deepinversion", "--teacher", "digits", "--setting-id", "2",
                    "--iterations", "5", "--lr", "0.5", "--no-flip", "--jitter", "0",
                    "--plan", "p", "--store-best-images", "--dry-run")
    assert result.exit_code == 0, result.output
    options = recorder["resolve"][0][1]
    spec = registry("method").get("deepinversion")
    assert options == spec.options(setting_id=2, iterations=5, lr=0.5, flip=False,
                                   jitter=0, plan="p", store_best_images=True)
    assert type(options.setting_id) is int


# --------------------------------------------------------------------------- running


def test_run_prints_the_summary_and_shuts_down(invoke, recorder):
    """Without ``--dry-run``: execute, then the summary line, then the distributed shutdown."""
    result = invoke("run", "deepinversion", "--teacher", "digits")
    assert (result.exit_code, result.output) == (0, "wrote out/dir: 8 images, teacher 50.0%\n")
    assert recorder["execute"] == [recorder["run"]] and recorder["shutdown"] == 1


def test_run_on_other_ranks_prints_nothing(invoke, recorder):
    """Under torchrun only the main process prints the summary; every rank shuts down."""
    recorder["main"] = False
    result = invoke("run", "deepinversion", "--teacher", "digits")
    assert (result.exit_code, result.output) == (0, "")
    assert recorder["execute"] == [recorder["run"]] and recorder["shutdown"] == 1


@pytest.mark.parametrize("summary, line", [
    ({"num_images": 3}, "wrote d/x: 3 images"),
    ({"num_images": 10, "teacher_accuracy": 1.0, "verifier_accuracy": 0.93},
     "wrote d/x: 10 images, teacher 100.0%, verifier 93.0%"),
    ({"num_images": 2, "teacher_accuracy": None, "verifier_accuracy": 0.125},
     "wrote d/x: 2 images, verifier 12.5%"),
    ({"num_images": 2, "teacher_accuracy": 1, "verifier_accuracy": 0.0004},
     "wrote d/x: 2 images, verifier 0.0%"),
])
def test_summary_line(summary, line):
    """Accuracies appear only as floats, in percent with one decimal, teacher first."""
    assert run_cli.summary_line(summary, Path("d/x")) == line


# --------------------------------------------------------------------------- a method's own


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    plain: bool = option(False, "A plain flag.", flags=("--plain",))
    toggle: bool | None = option(None, "A toggle.")
    mode: str = option("a", "Mode.", choices=("a", "b"))
    level: int | None = option(None, "Level.", choices=(0, 1, 2), flags=("--level", "-L"))
    count: int | None = option(None, "Count.", min=1, max=5)
    rate: float = option(0.5, "Rate.", min=0, max=1)
    label: str | None = option(None, "Label.", metavar="NAME")


def toy_spec(**kwargs) -> MethodSpec:
    values = dict(name="toy", summary="A toy method", factory=lambda *a, **k: None,
                  options=ToyOptions,
                  presets=(Preset("small", "s", "digits"), Preset("big", "b", "digits")),
                  prior_flags=(PriorFlag("tv_w", "tv-l2"),
                               PriorFlag("bn_mult", "bn-stats", flags=("--bn-mult", "-B"),
                                         option="first_bn_multiplier"),
                               PriorFlag("l2_w", "l2", help="Own help.")),
                  provider="toy-plugin")
    values.update(kwargs)
    return MethodSpec(**values)


class ToyPlugin:
    @hookimpl
    def invkit_methods(self):
        yield toy_spec()


def test_method_command_help_golden(monkeypatch):
    """A method's own options become typed click options (help page pinned whole): flags,
    ``--x/--no-x`` toggles, choices, ranges, finite floats, metavars, defaults in the help,
    shorthand prior flags and ``--preset``."""
    monkeypatch.setenv("COLUMNS", "80")
    command = run_cli.method_command(toy_spec())
    assert (command.name, command.help, command.short_help) == (
        "toy", "A toy method.", "A toy method")
    result = CliRunner().invoke(command, ["--help"], prog_name="toy")
    assert result.exit_code == 0
    assert_golden("cli-run-toy-help", result.output)


def test_method_command_values(invoke, recorder, register_plugin):
    """The toy method's values reach its options (typed) and its prior flags, in order."""
    register_plugin(ToyPlugin(), "toy-plugin")
    result = invoke("run", "toy", "--teacher", "digits", "--plain", "--no-toggle", "--mode",
                    "b", "-L", "2", "--count", "5", "--rate", "1", "--label", "z",
                    "--preset", "big", "-B", "3", "--l2-w", "0.5", "--tv-w", "1e-3",
                    "--dry-run")
    assert result.exit_code == 0, result.output
    request, options, spec = recorder["resolve"][0]
    assert options == ToyOptions(plain=True, toggle=False, mode="b", level=2, count=5,
                                 rate=1.0, label="z")
    assert type(options.level) is int and type(options.rate) is float
    assert request.preset == "big" and request.method == "toy"
    assert request.prior_flags == (("tv_w", 0.001), ("bn_mult", 3.0), ("l2_w", 0.5))
    result = invoke("run", "toy", "--teacher", "digits", "--toggle", "--dry-run")
    request, options, _ = recorder["resolve"][1]
    assert options == ToyOptions(toggle=True) and request.prior_flags == ()
    assert request.preset is None


@pytest.mark.parametrize("args, message", [
    (["--count", "6"], "Invalid value for '--count': 6 is not in the range 1<=x<=5."),
    (["--count", "0"], "Invalid value for '--count': 0 is not in the range 1<=x<=5."),
    (["--mode", "c"], "Invalid value for '--mode': 'c' is not one of 'a', 'b'."),
    (["-L", "3"], "Invalid value for '--level' / '-L': '3' is not one of '0', '1', '2'."),
])
def test_method_option_click_errors(invoke, recorder, register_plugin, args, message):
    """Ranges and choices of a method's options are enforced by click (exit 2)."""
    register_plugin(ToyPlugin(), "toy-plugin")
    result = invoke("run", "toy", "--teacher", "digits", *args)
    assert result.exit_code == 2 and result.output.splitlines()[-1] == f"Error: {message}"


@pytest.mark.parametrize("args, message", [
    (["--rate", "1.5"], "--rate=1.5 must be at most 1"),
    (["--rate", "-0.5"], "--rate=-0.5 must be at least 0"),
    (["--rate", "nan"], "--rate=nan is not a finite number"),
    (["--bn-mult", "inf"], "--bn-mult=inf is not a finite number"),
])
def test_method_float_refusals(invoke, recorder, register_plugin, args, message):
    """A float option's bounds are inclusive and checked by FiniteFloat: one Error line."""
    register_plugin(ToyPlugin(), "toy-plugin")
    result = invoke("run", "toy", "--teacher", "digits", *args)
    assert (result.exit_code, result.output) == (2, f"Error: {message}\n")


def test_rate_limits_accepted(invoke, recorder, register_plugin):
    """0 and 1 are both accepted for a [0, 1] float."""
    register_plugin(ToyPlugin(), "toy-plugin")
    for value in ("0", "1"):
        assert invoke("run", "toy", "--teacher", "d", "--rate", value, "--dry-run").exit_code == 0
    assert [o.rate for _, o, _ in recorder["resolve"]] == [0.0, 1.0]


def test_method_without_options_or_presets():
    """No options dataclass: no options object and no ``--preset``."""
    command = run_cli.method_command(toy_spec(options=None, presets=(), prior_flags=()))
    names = [p.name for p in command.params]
    assert "preset" not in names and "plain" not in names and names[-1] == "tensorboard"


def test_method_without_options_runs(invoke, recorder, register_plugin):
    """``options=None`` reaches ``resolve_run`` as ``None``."""

    class Bare:
        @hookimpl
        def invkit_methods(self):
            yield toy_spec(name="bare", options=None, presets=(), prior_flags=())

    register_plugin(Bare(), "bare-plugin")
    result = invoke("run", "bare", "--teacher", "digits", "--dry-run")
    assert result.exit_code == 0, result.output
    assert recorder["resolve"][0][1] is None and recorder["resolve"][0][0].preset is None


@pytest.mark.parametrize("flag, decl", [
    (PriorFlag("seed", "l2"), "--seed"),
    (PriorFlag("x", "l2", flags=("--x", "-q")), "-q"),
    (PriorFlag("y", "l2", flags=("--y", "--output")), "--output"),
])
def test_option_clash_refused(flag, decl):
    """A method declaring an option ``invkit run`` already has: one exact error."""
    with pytest.raises(InvkitError) as err:
        run_cli.method_command(toy_spec(prior_flags=(flag,)))
    assert str(err.value) == (f"method 'toy' (from plugin 'toy-plugin') declares option "
                              f"{decl} that invkit run already has")


def test_secondary_option_clash_refused():
    """A ``--x/--no-x`` toggle's ``--no-`` half is checked too."""

    @dataclasses.dataclass(frozen=True)
    class Clash:
        verbose: bool | None = option(None, "V.", flags=("--verbose/--quiet",))

    with pytest.raises(InvkitError) as err:
        run_cli.method_command(toy_spec(options=Clash, prior_flags=()))
    assert str(err.value) == ("method 'toy' (from plugin 'toy-plugin') declares option "
                              "--quiet that invkit run already has")


def test_flag_help_texts():
    """A shorthand flag's default help: its prior's weight, or the option it sets."""
    assert run_cli._flag_help(PriorFlag("a", "tv-l2")) == "Weight of prior tv-l2 (0 drops it)."
    assert run_cli._flag_help(PriorFlag("b", "bn-stats", option="first_bn_multiplier")) == (
        "Sets option first_bn_multiplier of prior bn-stats.")


def test_converted_choice_type():
    """``_Converted``: the choice's text, then the option's type; metavar only with a ctx."""
    kind = run_cli._Converted(click.Choice(["0", "1"]), int)
    assert kind.name == "choice" and kind.convert(1, None, None) == 1
    assert type(kind.convert("0", None, None)) is int
    param = click.Option(["--k"], type=kind)
    ctx = click.Context(click.Command("c"))
    assert kind.get_metavar(param, None) is None
    assert kind.get_metavar(param, ctx) == "[0|1]"
