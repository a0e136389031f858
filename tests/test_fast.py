"""The ``fast`` generator method: determinism, save/load, the command, torchrun."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from invkit import Checkpoint, build_objective, parse_prior
from invkit.errors import InvkitError
from invkit_plugins.generative import (
    FastConfig, FastGenerator, feature_diversity, load_generator, mode_seeking,
)
from tests.di_tiny import CLASSES, SIZE, tiny_teacher

CONFIG = FastConfig(train_steps=6, train_bs=8, lr=1e-2, z_dim=8, width=8, jitter=1,
                    diversity=0.1, save_every=3)
PRIORS = ("cross-entropy", "bn-stats:0.01,first_bn_multiplier=2", "tv-l2:1e-4")


def make(config=CONFIG, teacher=None):
    objective = build_objective([parse_prior(p) for p in PRIORS])
    return FastGenerator(teacher or tiny_teacher(), objective, config=config)


TARGETS = [0, 1, 2, 3, 3, 2]


@pytest.mark.parametrize("k", [0, 2])
def test_images_are_a_function_of_weights_seed_and_targets(k):
    config = dataclasses.replace(CONFIG, steps_per_batch=k, warmup_steps=2)
    fast = make(config)
    first = fast.generate(TARGETS, seed=5)
    assert first.images01.shape == (6, 3, SIZE, SIZE)
    assert first.images01.min() >= 0 and first.images01.max() <= 1
    # Another process (a torchrun rank, a resumed run) trains the same generator.
    other = make(config)
    assert torch.equal(other.generate(TARGETS, seed=5).images01, first.images01)
    # Later batches do not change the generator: the same batch again is the same.
    fast.generate([1, 1], seed=6)
    assert torch.equal(fast.generate(TARGETS, seed=5).images01, first.images01)
    assert not torch.equal(fast.generate(TARGETS, seed=6).images01, first.images01)
    assert set(first.losses) == {"cross-entropy", "bn-stats", "tv-l2", "total"}
    assert first.teacher_pred.shape == (6,)


def test_a_generator_seed_trains_another_generator():
    one = make().generate(TARGETS, seed=0).images01
    two = make(dataclasses.replace(CONFIG, generator_seed=1)).generate(TARGETS, seed=0).images01
    assert not torch.equal(one, two)


@pytest.mark.parametrize("k", [0, 2])
def test_saved_generator_gives_the_same_images_without_training(tmp_path, k):
    config = dataclasses.replace(CONFIG, steps_per_batch=k, warmup_steps=2,
                                 save_generator=str(tmp_path / "g.safetensors"))
    trained = make(config)
    images = trained.generate(TARGETS, seed=3).images01
    loaded = make(dataclasses.replace(config, generator=str(tmp_path / "g.safetensors"),
                                      save_generator=None, train_steps=0))
    assert loaded.net is not None  # loaded in the factory: nothing to train
    assert torch.equal(loaded.generate(TARGETS, seed=3).images01, images)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "g.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "invkit-generator/1" and meta["teacher"] == "tiny-bn"
    assert json.loads(meta["spec"]) == {"z_dim": 8, "width": 8, "size": SIZE, "channels": 3,
                                        "num_classes": CLASSES}
    assert json.loads(meta["info"])["train_steps"] == 6


def test_progress_reaches_the_callback_in_training_and_sampling():
    seen: list[Checkpoint] = []
    make().generate(TARGETS, seed=0, callback=seen.append)
    assert [(c.stage, c.stages) for c in seen] == [(1, 2)] * 6 + [(2, 2)]
    assert [c.iteration for c in seen] == list(range(1, 8))
    assert {c.total_iterations for c in seen} == {7}
    with_losses = [c.iteration for c in seen if c.losses is not None]
    assert with_losses == [3, 6, 7]
    assert seen[2].inputs.shape == (8, 3, SIZE, SIZE) and "mode-seeking" in seen[2].losses
    later: list[Checkpoint] = []
    fast = make()
    fast.generate([1], seed=0)
    fast.generate([1, 2], seed=1, callback=later.append)
    assert [(c.stage, c.stages, c.iteration, c.total_iterations) for c in later] == [(1, 1, 1, 1)]


def test_bad_targets_and_a_bad_generator_file_are_one_line_errors(tmp_path):
    with pytest.raises(InvkitError, match="out of range"):
        make().generate([CLASSES], seed=0)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(InvkitError, match="not a safetensors file"):
        load_generator(bad)
    with pytest.raises(InvkitError, match="no such file"):
        load_generator(tmp_path / "missing.safetensors")


def test_mode_seeking_and_feature_diversity_values():
    images = torch.zeros(3, 1, 2, 2)
    images[1] += 0.5
    z = torch.tensor([[0.0, 0.0], [1.0, 3.0], [5.0, 5.0]])
    # One same-class pair (0, 1): latent distance 2, image distance 0.5.
    assert mode_seeking(images, z, torch.tensor([0, 0, 1])).item() == pytest.approx(4.0, rel=1e-4)
    assert mode_seeking(images, z, torch.tensor([0, 1, 2])).item() == 0.0
    teacher = tiny_teacher()
    same = torch.rand(1, 3, SIZE, SIZE).expand(4, -1, -1, -1)
    labels = torch.tensor([0, 0, 1, 1])
    assert feature_diversity(teacher, same, labels) == pytest.approx(0, abs=1e-5)
    varied = (torch.rand(4, 3, SIZE, SIZE) * 255).round() / 255
    value = feature_diversity(teacher, varied, labels)
    assert value > 0
    as_uint8 = (varied * 255).round().to(torch.uint8)
    assert feature_diversity(teacher, as_uint8, labels) == pytest.approx(value, rel=1e-5)


def test_command_writes_every_output_and_reuses_the_generator(invoke, tmp_path):
    out, saved = tmp_path / "run", tmp_path / "g.safetensors"
    args = ["--teacher", "digits", "--num-batches", "2", "--bs", "8", "--train-steps", "4",
            "--train-bs", "8", "--save-every", "2", "--device", "cpu", "--quiet"]
    result = invoke("run", "fast", *args, "--output", str(out), "--save-generator", str(saved))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {r["batch"] for r in rows} == {0, 1}
    for name in ("grid.png", "run.json", "losses.csv", "progress/iter_00002.png"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["method"] == "fast" and run["config"]["preset"] == "digits"
    assert run["config"]["config"]["train_steps"] == 4 and saved.is_file()
    # The run keeps its generator too: the same weights as the --save-generator copy.
    from safetensors.torch import load_file

    kept, copy = load_file(out / "generator.safetensors"), load_file(saved)
    assert kept.keys() == copy.keys() and all(kept[k].equal(copy[k]) for k in kept)
    # Sampling from the saved generator: the same images, no training.
    again = tmp_path / "again"
    result = invoke("run", "fast", *args, "--output", str(again), "--generator", str(saved))
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(out) for p in (out / "images").rglob("*.png"))
    assert files and all((out / f).read_bytes() == (again / f).read_bytes() for f in files)
    config = json.loads((again / "run.json").read_text())["config"]["config"]
    assert config["generator"] == str(saved) and len(config["generator_sha256"]) == 64
    result = invoke("run", "fast", *args, "--output", str(tmp_path / "x"), "--generator",
                    str(tmp_path / "nope.safetensors"))
    assert result.exit_code == 2 and "no such file" in result.output
    assert not (tmp_path / "x").exists()


def test_torchrun_two_ranks_make_the_same_images_as_one(tmp_path):
    """Every rank trains the same generator from --generator-seed: the same dataset.

    Only the loss history differs: each rank logs its own training of the generator."""
    from tests.test_torchrun import dataset_files, torchrun

    command = ["-m", "invkit", "run", "fast", "--teacher", "digits", "--bs", "4",
               "--num-batches", "3", "--train-steps", "3", "--train-bs", "8", "--device",
               "cpu", "--quiet", "--save-every", "2"]
    outputs = {}
    for nproc in ("1", "2"):
        outputs[nproc] = tmp_path / f"np{nproc}"
        result = torchrun(*command, "--output", str(outputs[nproc]), nproc=nproc)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one, two = (dataset_files(outputs[n]) for n in ("1", "2"))
    for files in (one, two):
        del files["losses.csv"], files["losses.png"]
    # The same generator weights (its metadata holds the training time, which differs).
    from safetensors.torch import load_file

    g1, g2 = (load_file(outputs[n] / "generator.safetensors") for n in ("1", "2"))
    assert g1.keys() == g2.keys() and all(g1[k].equal(g2[k]) for k in g1)
    for files in (one, two):
        del files["generator.safetensors"]
    assert len([k for k in one if k.startswith("images")]) == 12
    assert sorted(one) == sorted(two) and one == two  # images, manifest, grids
    ranks = [b["rank"] for b in json.loads((outputs["2"] / "run.json").read_text())["batches"]]
    assert ranks == [0, 1, 0]
