"""invkit.pipeline's signals, plan, records and execute pinned exactly: the interrupt messages
and exit codes, the resume command, the record defaults, and what execute passes along
(network loading and seeding, progress, loss history, grids, the dataset writer)."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import sys
import threading
from types import SimpleNamespace

import pytest
import torch

from invkit.errors import InvkitError
from invkit.methods import Checkpoint, Generation
from invkit.pipeline import execute as execute_module
from invkit.pipeline.execute import _batch_generator, _check_loaded, _History, load_network
from invkit.pipeline.plan import Batch, batch_seed, plan_batches
from invkit.pipeline.record import RunIdentity, RunInfo, RunRequest, _as_dict
from invkit.pipeline.signals import (
    Abandon, RunInterrupted, StopSignal, interrupted, resume_command,
)

STOP_NOTE = ("\nStopping after the current batch (Ctrl-C again to stop now; "
             "the batch is then redone on --resume).\n")


@pytest.fixture
def single(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------- signals


def test_run_interrupted_exit_codes():
    error = RunInterrupted("stopped")
    assert isinstance(error, InvkitError) and str(error) == "stopped"
    assert (error.signum, error.exit_code) == (2, 130) and type(error.signum) is int
    term = RunInterrupted("x", signal.SIGTERM)
    assert (term.signum, term.exit_code) == (15, 143)
    abandon = Abandon(15)
    assert abandon.signum == 15 and abandon.args == (15,)
    assert not isinstance(abandon, Exception)


def test_first_ctrl_c_asks_to_stop_after_the_batch(single, capsys):
    stop = StopSignal()
    assert stop.signum is None and stop.requested is False
    stop._handle(signal.SIGINT, None)
    assert stop.signum == signal.SIGINT and stop.requested is True
    assert capsys.readouterr().err == STOP_NOTE
    with pytest.raises(Abandon) as again:  # a second Ctrl-C: now
        stop._handle(signal.SIGINT, None)
    assert again.value.signum == signal.SIGINT
    with pytest.raises(Abandon) as term:  # SIGTERM after Ctrl-C keeps the first signal
        stop._handle(signal.SIGTERM, None)
    assert term.value.signum == signal.SIGINT and stop.signum == signal.SIGINT
    assert capsys.readouterr().err == ""


def test_sigterm_abandons_at_once_and_other_ranks_print_nothing(single, monkeypatch, capsys):
    stop = StopSignal()
    with pytest.raises(Abandon) as term:
        stop._handle(signal.SIGTERM, None)
    assert term.value.signum == signal.SIGTERM and stop.signum == signal.SIGTERM
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    quiet = StopSignal()
    quiet._handle(signal.SIGINT, None)
    assert quiet.requested and capsys.readouterr().err == ""


def test_handlers_installed_and_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = StopSignal()
    with pytest.raises(ValueError):
        with stop.installed() as got:
            assert got is stop
            assert signal.getsignal(signal.SIGINT) == stop._handle
            assert signal.getsignal(signal.SIGTERM) == stop._handle
            raise ValueError("propagates")  # __exit__ does not swallow errors
    assert {s: signal.getsignal(s) for s in before} == before

    seen = []

    def in_thread():
        with stop.installed() as handlers_stop:
            seen.append((handlers_stop, signal.getsignal(signal.SIGINT)))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [(stop, before[signal.SIGINT])]


def test_interrupted_message_names_signal_progress_and_command(single, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/invkit", "run", "deepinversion"])
    error = interrupted("out/run", 3, 8, signal.SIGTERM)
    assert str(error) == ("interrupted by SIGTERM: 3 of 8 batches are complete in 'out/run'; "
                          "to continue, run the same command with --resume: "
                          "invkit run deepinversion --resume")
    assert error.exit_code == 143
    assert interrupted("o", 0, 1, signal.SIGINT).exit_code == 130


@pytest.mark.parametrize("argv, expected", [
    ([], "<your command> --resume"),
    (["/x/python3.11", "run", "--resume"], "python -m invkit run --resume"),
    (["-m", "run"], "python -m invkit run --resume"),
    (["-c", "run"], "python -m invkit run --resume"),
    (["/pkg/invkit/__main__.py", "run", "--overwrite"], "python -m invkit run --resume"),
    (["/venv/bin/invkit", "run", "--out", "a b", "--overwrite", "x"],
     "invkit run --out 'a b' x --resume"),
    (["my-python", "run"], "my-python run --resume"),
])
def test_resume_command(single, argv, expected):
    assert resume_command(argv) == expected


def test_resume_command_defaults_to_sys_argv_and_torchrun(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/v b/invkit", "run"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)  # one node: all ranks here
    assert resume_command() == "torchrun --nproc-per-node 2 '/v b/invkit' run --resume"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resume_command(["-m", "run"]) == (
        "torchrun <your torchrun options> -m invkit run --resume")


# ----------------------------------------------------------------------------- plan


def test_plan_targets_boundaries_and_shuffle_seed():
    assert plan_batches(num_classes=3, batch_size=2, targets=("2", 0)) == [
        Batch(0, (2, 0), batch_seed(0, 0))]
    assert plan_batches(num_classes=3, batch_size=3, targets=[0, 2])[0].targets == (0, 2, 0)
    with pytest.raises(InvkitError) as err:
        plan_batches(num_classes=3, batch_size=2, targets=[3])
    assert str(err.value) == "target 3 is out of range: classes are 0..2"
    labels = [0, 1, 2, 3] * 2
    random.Random("invkit-labels:9").shuffle(labels)
    plan = plan_batches(num_classes=4, batch_size=3, images_per_class=2, random_labels=True,
                        seed=9)
    assert [t for b in plan for t in b.targets] == labels
    assert [b.seed for b in plan] == [batch_seed(9, i) for i in range(3)]
    assert plan_batches(num_classes=4, batch_size=3, images_per_class=2, random_labels=True,
                        seed=9.0) == plan  # the seed is read as an integer
    assert [len(b.targets) for b in plan] == [3, 3, 2]


def test_batch_seed_is_63_bits():
    seeds = [batch_seed(s, i) for s in range(4) for i in range(4)]
    assert all(0 <= s < 2**63 for s in seeds) and len(set(seeds)) == 16
    assert batch_seed("3", 2.0) == batch_seed(3, 2)


# ----------------------------------------------------------------------------- records


def test_run_request_defaults():
    assert dataclasses.asdict(RunRequest()) == {
        "method": "deepinversion", "teacher": None, "arch": None, "weights": None,
        "trust_checkpoint": False, "priors": (), "no_default_priors": False,
        "prior_flags": (), "preset": None, "bs": None, "targets": None, "random_label": False,
        "num_batches": None, "images_per_class": None, "seed": 0, "device": None,
        "precision": "fp32", "output": None, "exp_name": None, "format": "png",
        "shard_size": 1024, "resume": False, "overwrite": False, "verifier": False,
        "verifier_arch": None, "verifier_weights": None, "student": None, "save_every": 100,
        "quiet": False, "tensorboard": False, "threads": None}


@dataclasses.dataclass(frozen=True)
class _Plain:
    a: tuple = (1, (2, 3))
    kind: type = int


@dataclasses.dataclass(frozen=True)
class _Own:
    x: int = 1

    def to_dict(self):
        return {"own": self.x}


def _identity(config):
    return RunIdentity(
        method="m", teacher="t", arch=None, weights="w", student=None, verifier="v",
        verifier_weights=None, preset="p", objective="1*ce", priors=(("ce", 1.0, ()),),
        config=config, precision="fp32", bs=4, targets=(1, 2), targets_source="given",
        random_labels=False, num_batches=None, images_per_class=2, seed=5, format="png",
        shard_size=8)


def test_identity_and_info_json():
    got = _identity(_Plain()).to_json()
    assert got == {
        "method": "m", "teacher": "t", "arch": None, "weights": "w", "student": None,
        "verifier": "v", "verifier_weights": None, "preset": "p", "objective": "1*ce",
        "priors": [["ce", 1.0, []]], "config": {"a": [1, [2, 3]], "kind": str(int)},
        "precision": "fp32", "bs": 4, "targets": [1, 2], "targets_source": "given",
        "random_labels": False, "num_batches": None, "images_per_class": 2, "seed": 5,
        "format": "png", "shard_size": 8}
    assert _identity(_Own(3)).to_json()["config"] == {"own": 3}
    assert _as_dict(_Plain) is _Plain and _as_dict([_Own(2), (1,)]) == [{"own": 2}, [1]]
    info = RunInfo(output="o", exp_name="e", device="cpu", save_every=3, preset_reason="r")
    assert info.to_json() == {"output": "o", "exp_name": "e", "device": "cpu",
                              "save_every": 3, "preset_reason": "r"}


# ----------------------------------------------------------------------------- execute


def _run(tmp_path, seed=7, tensorboard=False, save_every=2):
    return SimpleNamespace(
        identity=SimpleNamespace(seed=seed), output=tmp_path,
        request=SimpleNamespace(tensorboard=tensorboard),
        info=SimpleNamespace(save_every=save_every),
        objective=[(1.0, SimpleNamespace(name="ce")), (0.5, SimpleNamespace(name="tv"))],
        meta=SimpleNamespace(num_classes=10, input_size=32))


def test_load_network_is_seeded_by_run_seed_and_salt(tmp_path, monkeypatch):
    import invkit.teachers

    calls = []

    def fake_load(spec, **kwargs):
        calls.append((spec, kwargs))
        return torch.rand(4)

    monkeypatch.setattr(invkit.teachers, "load_teacher", fake_load)
    state = torch.random.get_rng_state()
    got = load_network("digits", _run(tmp_path, seed=7), arch="a", weights="none", trust=True,
                       device="meta", salt=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG untouched
    assert calls == [("digits", {"arch": "a", "weights": "none", "trust_checkpoint": True,
                                 "device": "meta"})]
    expected = torch.Generator().manual_seed(7 * 1009 + 2)
    assert torch.equal(got, torch.rand(4, generator=expected))
    default = load_network("x", _run(tmp_path, seed=0))
    assert calls[-1] == ("x", {"arch": None, "weights": None, "trust_checkpoint": False,
                               "device": "cpu"})
    assert torch.equal(default, torch.rand(4, generator=torch.Generator().manual_seed(0)))


def test_check_loaded_refuses_mismatched_weights(tmp_path):
    run = _run(tmp_path)
    teacher = SimpleNamespace(name="net", meta=SimpleNamespace(num_classes=10, input_size=32))
    _check_loaded(run, teacher)
    for classes, size in ((9, 32), (10, 28)):
        teacher.meta = SimpleNamespace(num_classes=classes, input_size=size)
        with pytest.raises(InvkitError) as err:
            _check_loaded(run, teacher)
        assert str(err.value) == (
            f"teacher 'net' loaded with {classes} classes at {size} px, but its description "
            "says 10 classes at 32 px: the weights do not match the named network")


def test_history_files_per_rank_and_finish(tmp_path, monkeypatch, single):
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    (tmp_path / "state").mkdir()
    history = _History(_run(tmp_path, tensorboard=True))
    assert history.weights == {"ce": 1.0, "tv": 0.5} and history.writer is None
    history.close()  # nothing opened yet: nothing to do
    writer = history.for_batch(2)
    assert history.for_batch(5) is writer
    assert writer.path == tmp_path / "state" / "losses.rank3.csv"
    assert writer.weights == {"ce": 1.0, "tv": 0.5}
    assert writer.tensorboard.log_dir == tmp_path / "tensorboard"
    writer.append(batch=5, stage=1, iteration=1, lr=0.1, losses={"ce": 2.0, "total": 2.0})
    history.close()
    assert writer.tensorboard._writer is None
    (tmp_path / "state" / "losses.rank0.csv").write_text(
        "batch,stage,iteration,lr,total\n0,1,1,0.1,1.0\n")
    notes = []
    history.finish(notes.append)
    assert (tmp_path / "losses.csv").read_text() == (
        "batch,stage,iteration,lr,ce,ce_weighted,total,best_total,verifier_accuracy\n"
        "0,1,1,0.1,,,1.0,,\n5,1,1,0.1,2.0,2.0,2.0,,\n")
    assert (tmp_path / "losses.png").is_file() and notes == []
    no_tb = _History(_run(tmp_path / "b"))
    (tmp_path / "b" / "state").mkdir(parents=True)
    assert no_tb.for_batch(0).tensorboard is None
    no_tb.finish(notes.append)  # no row yet, so no file: nothing to join or draw
    assert not (tmp_path / "b" / "losses.csv").exists() and notes == []


class _Display:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


class _Rows:
    def __init__(self):
        self.rows = []

    def append(self, **row):
        self.rows.append(row)


class _Teacher:
    def denormalize(self, x):
        return x * 2


def _checkpoints(inputs):
    base = dict(total_iterations=5, stage_iterations=3, lr=0.5, inputs=inputs)
    yield Checkpoint(stage=1, stages=2, iteration=1, stage_iteration=1, description="2x down",
                     **base)
    yield Checkpoint(stage=1, stages=2, iteration=2, stage_iteration=2,
                     losses={"ce": 1.0, "total": 1.5}, verifier_accuracy=0.25, **base)
    yield Checkpoint(stage=2, stages=2, iteration=3, stage_iteration=1,
                     losses={"ce": 2.0, "total": 3.0}, **base)
    yield Checkpoint(stage=2, stages=2, iteration=5, stage_iteration=3,
                     losses={"ce": 0.5, "total": 0.5}, **{**base, "inputs": None})


class _Generator:
    def __init__(self, inputs, verifier_pred=None, losses=None, size=2):
        self.inputs, self.verifier_pred, self.size = inputs, verifier_pred, size
        self.losses = losses or {"total": 0.5, "best_total": 0.25}
        self.calls = []

    def generate(self, targets, seed, callback):
        self.calls.append((targets, seed))
        for cp in _checkpoints(self.inputs):
            callback(cp)
        target = torch.tensor(targets)
        pred = torch.zeros_like(target)
        pred[0] = target[0]
        return Generation(inputs=None, images01=torch.zeros(len(targets), 3, self.size, self.size),
                          targets=target, losses=self.losses, timings=[1.0, 2.0], its_per_s=4.0,
                          teacher_pred=pred, teacher_conf=torch.ones(len(targets)),
                          verifier_pred=self.verifier_pred)


def test_batch_generator_reports_progress_history_and_grids(tmp_path, monkeypatch):
    import invkit.output

    grids = []
    monkeypatch.setattr(invkit.output, "save_grid",
                        lambda path, images: grids.append((path, images.clone())))
    times = iter([10.0, 13.5])
    clock = SimpleNamespace(perf_counter=lambda: next(times))
    monkeypatch.setattr(execute_module, "time", clock)
    rows, display = _Rows(), _Display()
    history = SimpleNamespace(weights={"ce": 2.0}, for_batch=lambda index: rows)
    inputs = torch.tensor([-1.0, 0.25, 1.0], dtype=torch.float64)
    generator = _Generator(inputs, verifier_pred=torch.tensor([1, 1]))
    generate = _batch_generator(generator, _Teacher(), _run(tmp_path, save_every=2), display,
                                history)
    done = generate(Batch(0, (1, 2), 99))
    assert generator.calls == [([1, 2], 99)]
    assert display.calls == [
        ("start_task", ("stage 1/2 (2x down)", 3), {}), ("advance", (), {}),
        ("advance", (), {}),
        ("report", ({"ce": 1.0, "total": 1.5}, 0.25), {"weights": {"ce": 2.0}}),
        ("start_task", ("stage 2/2", 3), {}), ("advance", (), {}),
        ("report", ({"ce": 2.0, "total": 3.0}, None), {"weights": {"ce": 2.0}}),
        ("advance", (), {}),
        ("report", ({"ce": 0.5, "total": 0.5}, None), {"weights": {"ce": 2.0}}),
        ("batch_summary", ({"total": 0.5, "best_total": 0.25}, 0.5),
         {"teacher_accuracy": 0.5, "kept": "the lowest-loss iterate"})]
    assert rows.rows == [
        dict(batch=0, stage=1, iteration=2, lr=0.5, losses={"ce": 1.0, "total": 1.5},
             accuracy=0.25),
        dict(batch=0, stage=2, iteration=3, lr=0.5, losses={"ce": 2.0, "total": 3.0},
             accuracy=None),
        dict(batch=0, stage=2, iteration=5, lr=0.5, losses={"ce": 0.5, "total": 0.5},
             accuracy=None)]
    # iteration 2 is due (every 2); 3 is not; 5 is the last but has no inputs
    assert [path for path, _ in grids] == [tmp_path / "progress" / "iter_00002.png"]
    assert grids[0][1].dtype == torch.float32
    assert grids[0][1].tolist() == [0.0, 0.5, 1.0]  # denormalised, clamped to [0, 1]
    assert done.stats == {"seconds": 3.5, "stage_seconds": [1.0, 2.0], "its_per_s": 4.0,
                          "teacher_accuracy": 0.5, "verifier_accuracy": 0.5}
    assert done.targets.tolist() == [1, 2] and done.teacher_pred.tolist() == [1, 0]
    assert done.teacher_conf.tolist() == [1.0, 1.0] and done.verifier_pred.tolist() == [1, 1]
    assert done.images01.shape == (2, 3, 2, 2)
    assert done.losses == {"total": 0.5, "best_total": 0.25}


def test_batch_generator_single_stage_later_batch_and_last_iterate(tmp_path, monkeypatch):
    import invkit.output

    grids = []
    monkeypatch.setattr(invkit.output, "save_grid", lambda path, images: grids.append(path))
    display = _Display()
    generator = _Generator(torch.zeros(1), losses={"total": 0.5})
    history = SimpleNamespace(weights={}, for_batch=lambda index: _Rows())
    generate = _batch_generator(generator, _Teacher(), _run(tmp_path, save_every=5), display,
                                history)
    done = generate(Batch(1, (3, 4), 1))
    assert grids == []  # only batch 0 saves progress grids
    assert display.calls[-1] == ("batch_summary", ({"total": 0.5}, None),
                                 {"teacher_accuracy": 0.5, "kept": "the last iterate"})
    assert "verifier_accuracy" not in done.stats

    class OneStage(_Generator):
        def generate(self, targets, seed, callback):
            callback(Checkpoint(stage=1, stages=1, iteration=5, total_iterations=5,
                                stage_iteration=5, stage_iterations=5, description="x",
                                losses={"total": 1.0}, inputs=torch.zeros(1)))
            return super().generate(targets, seed, lambda cp: None)

    display = _Display()
    _batch_generator(OneStage(None), _Teacher(), _run(tmp_path, save_every=3), display,
                     history)(Batch(0, (1,), 0))
    assert display.calls[0] == ("start_task", ("steps", 5), {})
    assert grids == [tmp_path / "progress" / "iter_00005.png"]  # the last iteration is due


def _resolved(tmp_path, **request):
    from invkit.pipeline import resolve_run
    from invkit_plugins.deepinversion import DIOptions

    base = dict(teacher="digits", images_per_class=1, bs=5, output=str(tmp_path / "out"),
                quiet=True, seed=3, save_every=1000)
    return resolve_run(RunRequest(**{**base, **request}), DIOptions(iterations=1))


def test_execute_passes_everything_along(tmp_path, monkeypatch, single):
    """Networks loaded with the identity's specs and salts, the writer given the run."""
    loads, made = [], []
    real_load = execute_module.load_network

    def recording_load(spec, run, **kwargs):
        loads.append((spec, kwargs))
        return real_load(spec, run, **kwargs)

    class Saving(_Generator):
        def save_artifacts(self, out):
            made.append(("saved", out))

    def factory(teacher, objective, *, config, student, verifier):
        made.append((teacher.name, objective, config, student, verifier))
        return Saving(torch.zeros(1, 3, 32, 32), verifier_pred=None, size=32)

    import invkit.history

    plots = []
    monkeypatch.setattr(invkit.history, "plot", lambda *args, **kwargs: plots.append(
        (args, kwargs)))
    monkeypatch.setattr(execute_module, "load_network", recording_load)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: made.append(("threads", n)))
    run = _resolved(tmp_path, verifier=True, threads=1, overwrite=True, save_every=1)
    run = dataclasses.replace(run, spec=SimpleNamespace(factory=factory))

    class Shown(_Display):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.calls.append(("exit", exc, {}))

    shown = Shown()
    summary = execute_module.execute(run, display=shown)
    assert loads == [
        ("digits", {"arch": None, "weights": None, "trust": False, "device": "cpu", "salt": 0}),
        ("digits-verifier", {"weights": None, "device": "cpu", "salt": 1})]
    assert made[0] == ("threads", 1)
    name, objective, config, student, verifier = made[1]
    assert (name, objective, config, student) == ("digits", run.objective, run.config, None)
    assert verifier is not None and type(verifier).__name__ == "TopKAccuracy"
    assert made[2:] == [("saved", run.output)]
    assert summary["config"] == run.identity.to_json()
    assert summary["info"] == run.info.to_json() and summary["num_classes"] == 10
    assert summary["format"] == "png" and summary["num_images"] == 10
    assert json.loads((run.output / "run.json").read_text())["complete"] is True
    names = [c[0] for c in shown.calls]
    assert names.count("batch_start") == 2 and names[-2:] == ["batch_done", "exit"]
    assert shown.calls[-1][1][0] is None  # the display's context exited cleanly
    rows = ["1,2,0.5,1.0,1.5,,0.25", "2,3,0.5,2.0,3.0,,", "2,5,0.5,0.5,0.5,,"]
    assert (run.output / "losses.csv").read_text() == (
        "batch,stage,iteration,lr,ce,total,best_total,verifier_accuracy\n"
        + "".join(f"{b},{row}\n" for b in (0, 1) for row in rows))
    ((csv_path, png_path), kwargs), = plots
    assert (csv_path, png_path, list(kwargs)) == (
        run.output / "losses.csv", run.output / "losses.png", ["log"])
    kwargs["log"]("a note")  # the display's log line
    assert shown.calls[-1] == ("log", ("a note",), {})
    assert sorted(p.name for p in (run.output / "progress").iterdir()) == [
        "iter_00002.png", "iter_00003.png"]
    # --resume of the finished run generates nothing more
    again = dataclasses.replace(_resolved(tmp_path, verifier=True, threads=1, resume=True,
                                          save_every=1), spec=SimpleNamespace(factory=factory))
    resumed = Shown()
    assert execute_module.execute(again, display=resumed)["num_images"] == 10
    assert "batch_start" not in [c[0] for c in resumed.calls]
    # a student is loaded with salt 2 and handed to the factory
    loads.clear()
    student = dataclasses.replace(
        _resolved(tmp_path, student="digits", output=str(tmp_path / "s")),
        spec=SimpleNamespace(factory=factory))
    execute_module.execute(student, display=Shown())
    assert loads[-1] == ("digits", {"device": "cpu", "salt": 2}) and len(loads) == 2
    assert made[-2][3] is not None and made[-2][4] is None


@pytest.mark.parametrize("quiet", [True, False])
def test_execute_builds_its_display_from_the_request(tmp_path, monkeypatch, single, quiet):
    """Without a display given, ``--quiet`` reaches the one execute builds (rank 0 shows)."""
    import invkit.history

    built = []

    class Recorded(_Display):
        def __init__(self, **kwargs):
            super().__init__()
            built.append(kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    def factory(teacher, objective, *, config, student, verifier):
        return _Generator(torch.zeros(1, 3, 32, 32), verifier_pred=None, size=32)

    monkeypatch.setattr(invkit.history, "plot", lambda *args, **kwargs: None)
    monkeypatch.setattr("invkit.progress.ProgressDisplay", Recorded)  # imported on use
    run = dataclasses.replace(_resolved(tmp_path, quiet=quiet),
                              spec=SimpleNamespace(factory=factory))
    assert execute_module.execute(run)["num_images"] == 10
    assert built == [{"quiet": quiet, "enabled": True}]
