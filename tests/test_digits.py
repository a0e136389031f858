"""The bundled digits networks and data: the offline default."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from invkit.teachers import check_verifier, load_teacher
from invkit.teachers import digits as D
from invkit.teachers.checkpoint import read_metadata

ROOT = Path(__file__).resolve().parents[1]


def accuracy(teacher, images01, labels) -> float:
    with torch.no_grad():
        predictions = teacher.module(teacher.normalize(images01)).argmax(1)
    return (predictions == labels).float().mean().item()


@pytest.mark.parametrize("name", ["digits", "digits-verifier", "digits-vit"])
def test_shipped_weights_reach_97_percent_on_the_heldout_split(name):
    images01, labels = D.digits_dataset("heldout")
    teacher = load_teacher(name)
    assert not teacher.module.training
    assert accuracy(teacher, images01, labels) >= 0.97


def test_dataset_shapes_and_ranges():
    images01, labels = D.digits_dataset("heldout")
    assert images01.shape == (450, 3, 32, 32) and images01.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (450,)
    assert 0.0 <= images01.min() and images01.max() <= 1.0
    assert torch.equal(images01[:, 0], images01[:, 2])  # grey images in RGB
    train, train_labels = D.digits_dataset("train")
    assert train.shape == (1347, 3, 32, 32)
    # Stratified: every class in both splits, in about the same proportion.
    assert torch.bincount(labels, minlength=10).min() >= 40
    assert torch.bincount(train_labels, minlength=10).min() >= 130


def test_unknown_split():
    from invkit.errors import InvkitError

    with pytest.raises(InvkitError, match="unknown digits split 'test' .*train, heldout"):
        D.digits_dataset("test")


def test_teacher_and_verifier_are_different_architectures():
    teacher, verifier = load_teacher("digits"), load_teacher("digits-verifier")
    assert any(isinstance(m, nn.BatchNorm2d) for m in teacher.module.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in verifier.module.modules())
    assert type(teacher.module) is not type(verifier.module)
    check_verifier(teacher, verifier)  # compatible: same classes and size
    for t in (teacher, verifier):
        assert (t.meta.input_size, t.meta.num_classes) == (32, 10)
        assert t.meta.class_names == tuple("0123456789")


@pytest.mark.parametrize("name", ["digits", "digits-verifier", "digits-vit"])
def test_shipped_files_carry_their_metadata(name):
    metadata = read_metadata(D.WEIGHTS[name])
    assert metadata["arch"] == name
    assert metadata["input_size"] == "32" and metadata["num_classes"] == "10"
    assert json.loads(metadata["mean"]) == list(D.MEAN)
    assert float(metadata["heldout_accuracy"]) >= 0.97


def test_digits_vit_is_a_small_layernorm_transformer_without_batchnorm():
    from invkit.teachers import find_teacher, has_batchnorm

    teacher = load_teacher("digits-vit")
    norms = {type(m) for m in teacher.module.modules() if "Norm" in type(m).__name__}
    assert norms == {nn.LayerNorm} and not has_batchnorm(teacher.module)
    assert find_teacher("digits-vit").batchnorm is False and find_teacher("digits").batchnorm
    assert has_batchnorm(load_teacher("digits").module)
    assert (teacher.meta.mean, teacher.meta.std) == (D.MEAN, D.STD)
    assert (teacher.meta.grayscale, teacher.meta.family) == (True, "digits")
    assert teacher.meta.class_names == D.CLASS_NAMES
    assert sum(p.numel() for p in teacher.module.parameters()) == 148042
    assert D.WEIGHTS["digits-vit"].stat().st_size < 1_000_000
    check_verifier(teacher, load_teacher("digits-verifier"))


def test_every_digits_network_says_whether_it_has_batchnorm():
    from invkit.teachers import has_batchnorm

    for name in D.BUILDERS:
        module = load_teacher(name, weights="none").module
        assert has_batchnorm(module) is D.BATCHNORM[name], name


def test_random_init_differs_from_shipped():
    shipped = load_teacher("digits").module.state_dict()
    random = load_teacher("digits", weights="none").module.state_dict()
    assert not torch.equal(shipped["fc.weight"], random["fc.weight"])


def test_listing_shows_source_size_and_classes(invoke):
    result = invoke("teachers", "list", "--include", "digits*", "--json")
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == {"digits", "digits-verifier", "digits-vit"}
    assert {n: r["batchnorm"] for n, r in rows.items()} == {
        "digits": True, "digits-verifier": False, "digits-vit": False}
    for row in rows.values():
        assert (row["source"], row["input_size"], row["num_classes"]) == ("bundled", 32, 10)
        assert row["provider"] == "invkit.teachers"


def _train_module():
    spec = importlib.util.spec_from_file_location("train_digits",
                                                  ROOT / "scripts" / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_split_is_the_scripts_split():
    pytest.importorskip("sklearn")
    splits = _train_module().make_splits()
    for split in D.SPLITS:
        images8, labels = D.digits_raw(split)
        assert torch.equal(splits[f"{split}_images"], images8)
        assert torch.equal(splits[f"{split}_labels"], labels)


def test_training_is_deterministic():
    train = _train_module().train
    images01, labels = D.digits_dataset("train")
    images01, labels = images01[:48], labels[:48]
    first = train("digits", images01, labels, epochs=1, seed=3, batch_size=16)
    second = train("digits", images01, labels, epochs=1, seed=3, batch_size=16)
    a, b = first.module.state_dict(), second.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    untrained = load_teacher("digits", weights="none").module.state_dict()
    assert not torch.equal(a["fc.weight"], untrained["fc.weight"])


def test_every_network_has_training_settings_and_the_vit_trains_deterministically():
    module = _train_module()
    assert set(module.TRAINING) == set(D.BUILDERS)
    # The convolutional networks keep the settings they shipped with.
    assert module.TRAINING["digits"] == module.Training(epochs=40, lr=3e-3, weight_decay=5e-4)
    images01, labels = D.digits_dataset("train")
    images01, labels = images01[:32], labels[:32]
    first = module.train("digits-vit", images01, labels, epochs=1, seed=2, batch_size=16)
    second = module.train("digits-vit", images01, labels, epochs=1, seed=2, batch_size=16)
    a, b = first.module.state_dict(), second.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
