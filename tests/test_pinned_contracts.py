"""Contracts a planted bug breaks silently unless pinned: option defaults, repeated priors,
non-finite numbers on every float flag, torchrun device selection, the CLI's
trust_checkpoint default, the top-level error path and a broken ``invkit_commands`` hook.

Each test names the kind of bug it guards (issue 18); values are exact, not ranges.
"""

from __future__ import annotations

import dataclasses
import inspect
import types

import click
import pytest

from invkit.errors import InvkitError
from invkit.objective import build_objective, merge_requests, parse_prior

# --- changed option defaults ---------------------------------------------------------------

#: Every registered prior: default weight and each option's (type, default).
PRIORS = {
    "cross-entropy": (1.0, {}),
    "tv-l1": (0.0, {}),
    "tv-l2": (1e-4, {}),
    "l2": (1e-5, {}),
    "bn-stats": (0.01, {"first_bn_multiplier": (float, 10.0)}),
    "adi": (0.2, {"student": (str, ""), "temperature": (float, 3.0), "detach": (bool, False)}),
}

SCHEDULES = {
    "constant": {}, "cosine": {}, "warmup-cosine": {"warmup": (int, 100)},
    "single-stage": {"iterations": (int, 2000)},
    "deepinversion-setting-0": {"iterations": (int, 3000)},
    "deepinversion-setting-1": {"iterations": (int, 2000)},
    "deepinversion-setting-2": {"iterations": (int, 20000)},
}


def _options(spec) -> dict:
    return {o.name: (o.type, o.default) for o in spec.options}


def test_every_prior_default_is_pinned():
    from invkit.registry import registry

    specs = {s.name: s for s in registry("prior")}
    assert set(PRIORS) <= set(specs)
    for name, (weight, options) in PRIORS.items():
        assert (specs[name].default_weight, _options(specs[name])) == (weight, options), name


def test_built_priors_carry_their_defaults():
    from invkit.objective import build_prior
    from invkit.registry import registry

    priors = registry("prior")
    assert build_prior(priors.get("bn-stats")).first_bn_multiplier == 10.0
    adi = build_prior(priors.get("adi"))
    assert (adi.temperature, adi.detach) == (3.0, False)
    assert build_prior(priors.get("tv-l1")).p == 1 and build_prior(priors.get("tv-l2")).p == 2
    # The classes' own defaults (Python API without a spec) agree with the specs.
    from invkit_plugins.deepinversion import BNStats, Competition

    assert inspect.signature(BNStats).parameters["first_bn_multiplier"].default == 10.0
    params = inspect.signature(Competition).parameters
    assert (params["temperature"].default, params["detach"].default) == (3.0, False)


def test_every_schedule_and_verifier_default_is_pinned():
    from invkit.registry import registry

    specs = {s.name: s for s in registry("schedule")}
    for name, options in SCHEDULES.items():
        assert _options(specs[name]) == options, name
    assert _options(registry("verifier").get("accuracy")) == {"k": (int, 5)}


def test_deepinversion_option_and_config_defaults_are_pinned():
    from invkit_plugins.deepinversion import DIConfig, DIOptions
    from invkit_plugins.deepinversion.presets import DEFAULT_PRIORS
    from invkit.registry import registry
    from invkit.specs import Stage

    assert all(f.default is None for f in dataclasses.fields(DIOptions))
    defaults = {f.name: f.default for f in dataclasses.fields(DIConfig)}
    assert defaults == {
        "plan": (Stage(2000, 1),), "iterations": None, "lr": 0.2, "betas": (0.5, 0.9),
        "eps": 1e-8, "lr_schedule": "warmup-cosine", "jitter": 30, "flip": True, "clip": True,
        "grayscale": False, "amp": "fp32", "resolution": None, "save_every": 100,
        "keep_best": True, "channels_last": None, "compile": False,
    }
    assert DEFAULT_PRIORS == ("cross-entropy:1", "bn-stats:0.01,first_bn_multiplier=10",
                              "tv-l2:0.0001", "l2:1e-05")
    method = registry("method").get("deepinversion")
    assert method.default_priors == DEFAULT_PRIORS and method.needs_batchnorm is True
    presets = {p.name: (p.bs, p.priors, p.verifier, p.options) for p in method.presets}
    assert presets == {
        "imagenet": (84, (), "mobilenet_v2",
                     DIOptions(setting_id=0, lr=0.2, jitter=30, flip=True)),
        "cifar10": (256, ("bn-stats:10,first_bn_multiplier=1", "tv-l2:2.5e-5", "l2:0"), None,
                    DIOptions(setting_id=1, plan="single-stage", iterations=2000, lr=0.1,
                              jitter=2, flip=True)),
        "digits": (100, ("bn-stats:0.05,first_bn_multiplier=5", "tv-l2:3e-4", "l2:0"),
                   "digits-verifier",
                   DIOptions(setting_id=1, plan="single-stage", iterations=800, lr=0.1,
                             jitter=2, flip=False)),
    }


def test_configure_without_options_gives_setting_0():
    from invkit import Context, TeacherMeta
    from invkit_plugins.deepinversion import DIOptions, configure
    from invkit.specs import Stage

    config = configure(DIOptions(), Context(TeacherMeta("t", 32, 10)))
    assert config.stages() == (Stage(2000, 2), Stage(1000, 1))
    assert (config.lr, config.betas, config.clip, config.jitter, config.flip) == \
        (0.2, (0.5, 0.9), True, 30, True)
    assert (config.amp, config.grayscale, config.save_every) == ("fp32", False, 100)


def test_shared_run_and_distill_defaults_are_pinned():
    from invkit.distill import DistillConfig
    from invkit.pipeline.record import RunRequest

    run = {f.name: f.default for f in dataclasses.fields(RunRequest)
           if f.default is not dataclasses.MISSING}
    assert run == {
        "method": "deepinversion", "teacher": None, "arch": None, "weights": None,
        "trust_checkpoint": False, "priors": (), "no_default_priors": False,
        "prior_flags": (), "preset": None, "bs": None, "targets": None,
        "random_label": False, "num_batches": None, "images_per_class": None, "seed": 0,
        "device": None, "precision": "fp32", "output": None, "exp_name": None,
        "format": "png", "shard_size": 1024, "resume": False, "overwrite": False,
        "verifier": False, "verifier_arch": None, "verifier_weights": None, "student": None,
        "save_every": 100, "quiet": False, "tensorboard": False, "threads": None,
    }
    distill = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
    assert distill == {
        "epochs": 30, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
        "weight_decay": 5e-4, "temperature": 4.0, "warmup_epochs": 1, "grad_clip": 5.0,
        "padding": None, "flip": True, "seed": 0, "device": "cpu", "eval_batch_size": 512,
        "num_workers": 0,
    }


def _param_defaults(command: click.Command) -> dict:
    ctx = click.Context(command)
    return {p.name: p.get_default(ctx) for p in command.params}


def test_cli_flag_defaults_are_pinned():
    from invkit.cli import make_cli

    cli = make_cli()
    ctx = click.Context(cli)
    run = _param_defaults(cli.get_command(ctx, "run").get_command(ctx, "deepinversion"))
    assert {k: run[k] for k in ("trust_checkpoint", "seed", "save_every", "fmt", "shard_size",
                                "fp16", "bf16", "resume", "overwrite", "use_verifier",
                                "no_default_priors", "dry_run")} == {
        "trust_checkpoint": False, "seed": 0, "save_every": 100, "fmt": "png",
        "shard_size": 1024, "fp16": False, "bf16": False, "resume": False, "overwrite": False,
        "use_verifier": False, "no_default_priors": False, "dry_run": False}
    distill = _param_defaults(cli.get_command(ctx, "distill"))
    assert {k: distill[k] for k in ("trust_checkpoint", "temperature", "weight_decay", "lr")} \
        == {"trust_checkpoint": False, "temperature": 4.0, "weight_decay": 5e-4, "lr": None}
    assert _param_defaults(cli.get_command(ctx, "eval"))["trust_checkpoint"] is False


# --- the same prior twice with different options --------------------------------------------

def test_same_prior_with_different_options_stays_two_terms():
    requests = [parse_prior("bn-stats:0.01,first_bn_multiplier=10"),
                parse_prior("bn-stats:0.02,first_bn_multiplier=1"),
                parse_prior("tv-l2:1e-4"), parse_prior("tv-l2:2e-4")]
    objective = build_objective(requests)
    assert [(w, p.name, p.options) for w, p in objective] == [
        (0.01, "bn-stats", {"first_bn_multiplier": 10.0}),
        (0.02, "bn-stats", {"first_bn_multiplier": 1.0}),
        (pytest.approx(3e-4), "tv-l2", {}),
    ]
    assert objective.labels() == ["bn-stats(first_bn_multiplier=10)",
                                  "bn-stats(first_bn_multiplier=1)", "tv-l2"]
    # Defaults of a name given twice are replaced, and both given entries are kept.
    defaults = [parse_prior("bn-stats:0.5"), parse_prior("l2")]
    merged = merge_requests(defaults, requests[:2])
    assert [r.name for r in merged] == ["l2", "bn-stats", "bn-stats"]
    assert [r.weight for r in merged] == [None, 0.01, 0.02]


def test_cli_keeps_two_prior_entries_as_two_terms(invoke):
    result = invoke("run", "deepinversion", "--teacher", "digits", "--no-default-priors",
                    "--prior", "bn-stats:0.01,first_bn_multiplier=10",
                    "--prior", "bn-stats:0.02,first_bn_multiplier=1", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "objective: 0.01*bn-stats(first_bn_multiplier=10) + "
        "0.02*bn-stats(first_bn_multiplier=1)")


# --- non-finite numbers on every float flag ---------------------------------------------------

def test_every_float_flag_is_finite_float():
    from invkit.cli import make_cli
    from invkit.cli.options import FiniteFloat

    cli = make_cli()
    ctx = click.Context(cli)
    run = cli.get_command(ctx, "run")
    # Every command and every method's command: none may take a float click would not check.
    commands = [cli.get_command(ctx, name) for name in cli.list_commands(ctx) if name != "run"]
    commands += [run.get_command(ctx, name) for name in run.list_commands(ctx)]
    names = {c.name for c in commands}
    assert {"deepinversion", "fast", "pii", "distill", "prune", "extend"} <= names
    for command in commands:
        if isinstance(command, click.Group):
            continue
        floats = [p for p in command.params
                  if isinstance(p.type, (FiniteFloat, click.types.FloatParamType))]
        assert all(isinstance(p.type, FiniteFloat) for p in floats), \
            (command.name, [p.name for p in floats if not isinstance(p.type, FiniteFloat)])


RUN_FLOATS = ["--lr", "--main-loss-multiplier", "--r-feature", "--first-bn-multiplier",
              "--tv-l1", "--tv-l2", "--l2", "--adi-scale"]


@pytest.mark.parametrize("flag", RUN_FLOATS)
@pytest.mark.parametrize("value", ["nan", "-inf"])
def test_run_refuses_non_finite_on_every_float_flag(invoke, flag, value):
    result = invoke("run", "deepinversion", "--teacher", "digits", "--dry-run", f"{flag}={value}")
    assert result.exit_code == 2, result.output
    assert "finite" in result.output and result.output.count("\n") == 1, result.output


@pytest.mark.parametrize("text", ["bn-stats,first_bn_multiplier=nan", "adi:1,temperature=inf",
                                  "tv-l2:nan", "l2:-inf"])
def test_run_refuses_non_finite_prior_entries(invoke, text):
    result = invoke("run", "deepinversion", "--teacher", "digits", "--dry-run", "--prior", text)
    assert result.exit_code == 2 and "finite" in result.output, result.output


def test_python_api_refuses_non_finite_weights_and_configs():
    from invkit.objective import PriorRequest
    from invkit_plugins.deepinversion import DIConfig

    for weight in (float("nan"), float("inf")):
        with pytest.raises(InvkitError, match="finite"):
            build_objective([PriorRequest("tv-l2", weight)])
        with pytest.raises(InvkitError, match="lr"):
            DIConfig(lr=weight)


# --- device selection under torchrun ------------------------------------------------------------

@pytest.fixture
def fake_cuda(monkeypatch):
    """Four CUDA devices that record ``set_device`` (the real torch.cuda is never touched)."""
    import torch

    calls = types.SimpleNamespace(set_device=[])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", calls.set_device.append)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return calls


def _torchrun_env(monkeypatch, rank, world, local):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local))


def test_cuda_device_is_the_local_rank_not_the_global_rank(monkeypatch, fake_cuda):
    from invkit.distributed import DistEnv, dist_env, local_device

    _torchrun_env(monkeypatch, rank=6, world=8, local=2)  # second node, third GPU
    assert dist_env() == DistEnv(6, 8, 2)
    assert local_device("cuda") == "cuda:2" and local_device(None) == "cuda:2"
    assert local_device("auto") == "cuda:2"
    assert local_device("cuda:3") == "cuda:3"  # an explicit index is kept
    assert local_device("cpu") == "cpu"
    assert fake_cuda.set_device == [2, 2, 2, 3]
    _torchrun_env(monkeypatch, rank=5, world=8, local=5)
    with pytest.raises(InvkitError, match="local rank 5 has no CUDA device"):
        local_device("cuda")


def test_single_process_uses_the_current_cuda_device(monkeypatch, fake_cuda):
    from invkit.distributed import local_device

    import torch

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert local_device("cuda") == "cuda:1" and fake_cuda.set_device == [1]


@pytest.mark.parametrize("device, backend", [("cuda:1", "nccl"), ("cuda", "nccl"),
                                             ("cpu", "gloo"), (None, "gloo")])
def test_init_distributed_picks_nccl_for_cuda_and_gloo_for_cpu(monkeypatch, device, backend):
    import torch.distributed as dist

    import invkit.distributed as distributed

    calls = []
    _torchrun_env(monkeypatch, rank=1, world=2, local=1)
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(distributed.atexit, "register", lambda fn: None)
    env = distributed.init_distributed(device)
    assert calls == [{"backend": backend, "timeout": distributed.TIMEOUT}]
    assert (env.rank, env.world_size, env.local_rank) == (1, 2, 1)


def test_init_distributed_outside_torchrun_does_nothing(monkeypatch):
    import torch.distributed as dist

    import invkit.distributed as distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: pytest.fail("joined a group"))
    assert distributed.init_distributed("cuda:0") == distributed.DistEnv(0, 1, 0)


# --- trust_checkpoint=False by default, from the CLI to load_teacher ---------------------------

class _Stop(InvkitError):
    pass


@pytest.fixture
def captured_loads(monkeypatch):
    import invkit.teachers

    calls = []

    def fake_load(spec, **kwargs):
        calls.append((spec, kwargs.get("trust_checkpoint")))
        raise _Stop("stopped by the test after load_teacher")

    monkeypatch.setattr(invkit.teachers, "load_teacher", fake_load)
    return calls


@pytest.mark.parametrize("extra, trusted", [((), False), (("--trust-checkpoint",), True)])
def test_trust_checkpoint_reaches_load_teacher(invoke, captured_loads, tmp_path, extra, trusted):
    from tests.tiny_classifier import random_uint8, write_imagefolder

    data = write_imagefolder(tmp_path / "data", *random_uint8(2, seed=0))
    commands = [
        ("run", "deepinversion", "--teacher", "digits", "--iterations", "2", "--bs", "2",
         "--num-batches", "1", "--device", "cpu", "--quiet", "--output", str(tmp_path / "run")),
        ("eval", str(data), "--verifier-arch", "digits-verifier", "--device", "cpu"),
        ("distill", "--teacher", "digits", "--student", "digits-verifier", "--data", str(data),
         "--output", str(tmp_path / "student"), "--epochs", "1", "--device", "cpu"),
    ]
    for args in commands:
        captured_loads.clear()
        result = invoke(*args, *extra)
        assert result.exit_code == 2 and "stopped by the test" in result.output, result.output
        first = "digits-verifier" if args[0] == "eval" else "digits"
        assert captured_loads[0] == (first, trusted), args[0]


# --- the top-level error path and a broken invkit_commands hook ----------------------------------

def test_main_turns_an_invkit_error_while_building_the_cli_into_exit_2(monkeypatch, capsys):
    import invkit.cli

    def broken():
        raise InvkitError("plugins 'a' and 'b' both define teacher 'x'")

    monkeypatch.setattr(invkit.cli, "make_cli", broken)
    with pytest.raises(SystemExit) as exit_info:
        invkit.cli.main(["teachers", "list"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "Error: plugins 'a' and 'b' both define teacher 'x'\n"
    assert captured.out == ""


def test_main_runs_a_command_and_exits_0(capsys):
    import invkit.cli

    with pytest.raises(SystemExit) as exit_info:
        invkit.cli.main(["priors", "list"])
    assert exit_info.value.code == 0 and "tv-l2" in capsys.readouterr().out


class BrokenCommands:
    from invkit.hookspecs import hookimpl

    @hookimpl
    def invkit_commands(self, cli):
        raise RuntimeError("cannot add my command")


class GoodCommands:
    from invkit.hookspecs import hookimpl

    @hookimpl
    def invkit_commands(self, cli):
        @cli.command("hello-test")
        def hello():
            click.echo("hello from a plugin")


def test_broken_invkit_commands_hook_is_a_warning_and_the_rest_works(register_plugin, capsys):
    import invkit.cli

    register_plugin(BrokenCommands(), "broken-commands")
    register_plugin(GoodCommands(), "good-commands")
    for argv, expected in ((["hello-test"], "hello from a plugin"), (["priors", "list"], "tv-l2")):
        with pytest.raises(SystemExit) as exit_info:
            invkit.cli.main(argv)
        captured = capsys.readouterr()
        assert exit_info.value.code == 0, captured
        assert expected in captured.out
        assert captured.err == ("Warning: plugin 'broken-commands' failed to run "
                                "invkit_commands: RuntimeError: cannot add my command\n")
