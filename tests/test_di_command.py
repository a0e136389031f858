"""``invkit run deepinversion``: the published command line, dry runs, and a whole CPU run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.di_tiny import CLASSES, SIZE, TinyTeachers

SEED_COMMAND = ["--bs=84", "--do_flip", "--exp_name=test_rn50", "--r_feature=0.01",
                "--arch_name=resnet50", "--fp16", "--verifier"]


@pytest.fixture
def tiny(register_plugin):
    register_plugin(TinyTeachers(), "di-tiny-teachers")


def dry(invoke, *args):
    result = invoke("run", "deepinversion", *args, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("objective: ") and lines[1].startswith("plan: ")
    config = {}
    for line in lines:
        if line.startswith("  "):  # identity and info entries: "  key: JSON"
            key, _, value = line.strip().partition(": ")
            config[key] = json.loads(value)
    config.update(config.pop("config"))  # the method's configuration, flattened
    return lines[0][len("objective: "):], config


def test_seed_command_parses_and_dry_run_needs_no_weights(invoke, monkeypatch):
    import invkit.teachers

    def no_loading(*a, **k):  # a dry run must not load any network
        raise AssertionError("dry run loaded a teacher")

    monkeypatch.setattr(invkit.teachers, "load_teacher", no_loading)
    objective, config = dry(invoke, *SEED_COMMAND)
    assert objective == ("1*cross-entropy + 0.01*bn-stats(first_bn_multiplier=10) + "
                         "0.0001*tv-l2 + 1e-05*l2")
    assert config["bs"] == 84 and config["flip"] is True and config["amp"] == "fp16"
    assert config["teacher"] == "resnet50" and config["preset"] == "imagenet"
    assert config["verifier"] == "mobilenet_v2"
    # What the published code loaded: torchvision's original (V1) weights, for both.
    assert config["weights"] == "IMAGENET1K_V1" and config["verifier_weights"] == "IMAGENET1K_V1"
    assert config["exp_name"] == "test_rn50"
    assert config["output"] == str(Path("generations") / "test_rn50")
    assert config["plan"] == [{"iterations": 2000, "downsample": 2},
                              {"iterations": 1000, "downsample": 1}]
    assert config["lr"] == 0.2 and config["betas"] == [0.5, 0.9] and config["jitter"] == 30
    assert len(config["targets"]) == 42


def test_seed_command_without_weights_fails_in_one_line(invoke, tmp_path, monkeypatch):
    # No download attempt, and an empty weights cache: the ResNet-50 weights are absent.
    monkeypatch.setenv("INVKIT_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    result = invoke("run", "deepinversion", *SEED_COMMAND, "--device", "cpu",
                    "--output", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "resnet50" in result.output and "--weights" in result.output
    assert not (tmp_path / "out").exists()


def test_shorthand_flags_are_prior_weights(invoke):
    objective, config = dry(invoke, "--teacher", "digits", "--r-feature", "0",
                            "--tv-l1", "1e-3", "--prior", "tv-l2:5e-4", "--l2", "2e-5",
                            "--main_loss_multiplier", "2")
    assert objective == "2*cross-entropy + 0.0005*tv-l2 + 0.001*tv-l1 + 2e-05*l2"
    assert config["preset"] == "digits" and config["flip"] is False
    objective, _ = dry(invoke, "--teacher", "digits", "--first_bn_multiplier", "3",
                       "--r_feature", "0.5", "--tv_l2", "0")
    assert objective == "1*cross-entropy + 0.5*bn-stats(first_bn_multiplier=3)"
    objective, _ = dry(invoke, "--no-default-priors", "--prior", "cross-entropy",
                       "--prior", "bn-stats:0.1,first_bn_multiplier=2")
    assert objective == "1*cross-entropy + 0.1*bn-stats(first_bn_multiplier=2)"


def test_setting_iterations_and_preset_options(invoke):
    _, config = dry(invoke, "--arch", "resnet18", "--setting_id", "0", "--iterations", "300")
    assert config["plan"] == [{"iterations": 200, "downsample": 2},
                              {"iterations": 100, "downsample": 1}]
    _, config = dry(invoke, "--arch", "resnet18", "--setting-id", "2")
    assert config["plan"] == [{"iterations": 20000, "downsample": 1}]
    assert config["betas"] == [0.9, 0.999] and config["clip"] is False
    _, config = dry(invoke, "--preset", "cifar10", "--no-flip", "--targets", "1,2,3")
    assert config["teacher"] == "cifar-resnet34" and config["bs"] == 256
    assert config["flip"] is False and config["targets"] == [1, 2, 3]
    _, config = dry(invoke, "--teacher", "digits", "--random_label", "--bf16", "--jitter", "0")
    assert config["targets"] is None and config["random_labels"] is True
    assert config["amp"] == "bf16" and config["jitter"] == 0


def test_a_bare_run_uses_the_digits_teacher_and_its_preset(invoke):
    objective, config = dry(invoke)
    assert config["teacher"] == "digits" and config["preset"] == "digits"
    assert objective.startswith("1*cross-entropy + 0.05*bn-stats")
    assert config["grayscale"] is True and config["flip"] is False
    _, config = dry(invoke, "--color")
    assert config["grayscale"] is False
    _, config = dry(invoke, "--arch", "resnet18", "--grayscale")
    assert config["preset"] == "imagenet" and config["grayscale"] is True
    _, config = dry(invoke, "--arch", "resnet18")
    assert config["grayscale"] is False


@pytest.mark.parametrize("args, message", [
    (["--fp16", "--bf16"], "--fp16 and --bf16"),
    (["--prior", "nope"], "unknown prior 'nope'"),
    (["--preset", "cifar10", "--verifier"], "no default verifier"),
    (["--prior", "bn-stats,first_bn=2"], "has no option 'first_bn'"),
    (["--targets", "1,x"], "--targets '1,x' is not a comma-separated list"),
])
def test_bad_options_are_one_line_errors(invoke, args, message):
    result = invoke("run", "deepinversion", *args, "--dry-run")
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1


def run_tiny(invoke, out, *extra):
    return invoke("run", "deepinversion", "--teacher", "tiny-bn", "--verifier-arch",
                  "tiny-bn-verifier", "--iterations", "20", "--save-every", "10", "--bs", "6",
                  "--jitter", "2", "--device", "cpu", "--quiet", "--output", str(out),
                  "--preset", "imagenet", *extra)


def test_whole_run_writes_every_output(invoke, tiny, tmp_path):
    out = tmp_path / "run"
    result = run_tiny(invoke, out, "--targets", "1,2,3")
    assert result.exit_code == 0, result.output
    for name in ("iter_00010.png", "iter_00020.png"):
        with Image.open(out / "progress" / name) as im:
            assert im.size[0] > SIZE
    with Image.open(out / "grid.png") as im:
        im.verify()
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert [r["target"] for r in rows] == [1, 2, 3, 1, 2, 3]
    for row in rows:
        path = out / row["file"]
        assert path.parent.name.startswith(f"{row['target']:03d}")
        with Image.open(path) as im:
            assert im.size == (SIZE, SIZE) and im.mode == "RGB"
        assert 0 <= row["teacher_pred"] < CLASSES and 0 <= row["teacher_conf"] <= 1
        assert 0 <= row["verifier_pred"] < CLASSES
    pngs = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png"))
    assert pngs == sorted(r["file"] for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["teacher"] == "tiny-bn"
    assert run["config"]["objective"].startswith("1*cross-entropy + 0.01*bn-stats")
    assert run["config"]["config"]["plan"] == [{"iterations": 13, "downsample": 2},
                                               {"iterations": 7, "downsample": 1}]
    assert run["info"]["device"] == "cpu" and run["info"]["output"] == str(out)
    assert "versions" in json.dumps(run)
    stats = run["batches"][0]["stats"]
    assert len(stats["stage_seconds"]) == 2 and stats["its_per_s"] > 0
    # The batch's own time: its stages and the set-up around them, not a clock reading.
    assert sum(stats["stage_seconds"]) <= stats["seconds"] < 600
    assert 0 <= stats["verifier_accuracy"] <= 1 and 0 <= stats["teacher_accuracy"] <= 1
    losses = run["batches"][0]["losses"]
    assert set(losses) >= {"cross-entropy", "bn-stats", "tv-l2", "l2", "total", "best_total"}


def test_refuses_a_non_empty_output_without_overwrite(invoke, tiny, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_tiny(invoke, out)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert not (out / "images").exists()
    # --overwrite deletes only an invkit run's files: a directory that never held one
    # is refused, and the user's file is untouched.
    result = run_tiny(invoke, out, "--overwrite", "--bf16")
    assert result.exit_code == 2 and "holds no invkit run state" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    result = run_tiny(invoke, out, "--overwrite", "--bf16")
    assert result.exit_code == 0, result.output
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6
    # A finished run: other settings are refused without --overwrite and replace it with.
    result = run_tiny(invoke, out)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert '"bf16"' in (out / "run.json").read_text()
    result = run_tiny(invoke, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert '"bf16"' not in (out / "run.json").read_text()
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6


def test_multi_batch_run_keeps_progress_of_the_first_batch_and_resumes(invoke, tiny, tmp_path):
    out = tmp_path / "run"
    args = ["--num-batches", "2", "--bs", "4", "--iterations", "10", "--save-every", "5"]
    result = run_tiny(invoke, out, *args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "progress").iterdir()) == [
        "iter_00005.png", "iter_00010.png"]
    manifest = (out / "manifest.jsonl").read_text()
    rows = [json.loads(line) for line in manifest.splitlines()]
    assert len(rows) == 8 and {r["batch"] for r in rows} == {0, 1}
    assert sorted(r["target"] for r in rows) == [0, 0, 1, 1, 2, 2, 3, 3]  # class-balanced
    assert len({r["seed"] for r in rows}) == 2
    again = run_tiny(invoke, out, *args, "--resume")
    assert again.exit_code == 0, again.output
    assert (out / "manifest.jsonl").read_text() == manifest


def test_random_weights_are_seeded_by_the_run_seed(invoke, tmp_path):
    def images(out, seed):
        result = invoke("run", "deepinversion", "--arch", "resnet18", "--weights", "none",
                        "--bs", "2", "--resolution", "32", "--iterations", "3", "--seed", seed,
                        "--device", "cpu", "-q", "--output", str(out))
        assert result.exit_code == 0, result.output
        return {p.name: p.read_bytes() for p in sorted(out.rglob("images/*/*.png"))}

    first = images(tmp_path / "a", "7")
    assert images(tmp_path / "b", "7") == first
    assert images(tmp_path / "c", "8") != first


def test_dry_run_validates_teacher_and_verifier_names(invoke):
    result = invoke("run", "deepinversion", "--arch", "resnet5", "--weights", "none", "--dry-run")
    assert result.exit_code == 2 and "unknown teacher 'resnet5'" in result.output
    assert "resnet50" in result.output and result.output.count("\n") == 1
    result = invoke("run", "deepinversion", "--teacher", "digits", "--verifier-arch",
                    "digts-verifier", "--dry-run")
    assert result.exit_code == 2 and "did you mean: digits-verifier" in result.output


def test_methods_show_lists_own_options_flags_and_presets(invoke):
    out = invoke("methods", "show", "deepinversion").output
    for text in ("--setting-id", "--do-flip/--no-flip", "--r-feature", "--lr-schedule",
                 "imagenet", "cifar10", "digits", "digits-verifier"):
        assert text in out, text
    import json

    record = json.loads(invoke("methods", "show", "deepinversion", "--json").output)
    assert [o["name"] for o in record["options"]][:3] == ["setting_id", "plan", "iterations"]
    assert {p["name"]: p["bs"] for p in record["presets"]} == {
        "imagenet": 84, "cifar10": 256, "digits": 100}
    assert record["needs_batchnorm"] is True


def test_a_refused_rerun_names_the_next_free_directory(invoke, tiny, tmp_path):
    out = tmp_path / "run"
    assert run_tiny(invoke, out, "--iterations", "2").exit_code == 0
    again = run_tiny(invoke, out, "--iterations", "2")
    assert again.exit_code == 2
    assert f"{str(tmp_path / 'run-2')!r} is free" in again.output
