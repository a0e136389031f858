"""Loading generated datasets: PNG ImageFolders, safetensors shards, and both combined."""

from __future__ import annotations

import pytest
import torch

from invkit.data import class_folders, dataset_class_names, load_image_dataset, to_float01
from invkit.errors import InvkitError
from tests.tiny_classifier import random_uint8, write_imagefolder, write_shards


def test_imagefolder_round_trip_is_exact(tmp_path):
    images, targets = random_uint8(12, seed=0)
    write_imagefolder(tmp_path / "run", images, targets, names={3: "cat"})
    loaded, loaded_targets = load_image_dataset([tmp_path / "run"])
    # Files are read class by class; compare as multisets of (target, image) pairs.
    expected = sorted((t, i.flatten().tolist()) for t, i in zip(targets.tolist(), images))
    got = sorted((t, i.flatten().tolist()) for t, i in zip(loaded_targets.tolist(), loaded))
    assert loaded.dtype == torch.uint8 and loaded_targets.dtype == torch.int64
    assert got == expected


def test_class_index_comes_from_the_directory_name_not_sorted_order(tmp_path):
    # Classes 2 and 7 only: sorted order would call them 0 and 1.
    images, _ = random_uint8(4, seed=1)
    write_imagefolder(tmp_path, images, torch.tensor([2, 2, 7, 7]), names={7: "seven"})
    _, targets = load_image_dataset([tmp_path / "images"])
    assert sorted(targets.tolist()) == [2, 2, 7, 7]
    assert [(c.index, c.name) for c in class_folders(tmp_path / "images")] == [(2, None), (7, "seven")]
    assert dataset_class_names([tmp_path]) == {7: "seven"}


def test_real_imagefolder_without_indices_uses_sorted_names(tmp_path):
    from PIL import Image

    for name in ("dog", "cat"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (5, 5), (10, 20, 30)).save(tmp_path / name / "a.png")
    images, targets = load_image_dataset([tmp_path])
    assert images.shape == (2, 3, 5, 5)
    assert targets.tolist() == [0, 1]  # cat, dog
    assert images[0, :, 0, 0].tolist() == [10, 20, 30]


def test_png_and_safetensors_dirs_combine(tmp_path):
    a_images, a_targets = random_uint8(6, seed=2)
    b_images, b_targets = random_uint8(7, seed=3)
    write_imagefolder(tmp_path / "png", a_images, a_targets)
    write_shards(tmp_path / "st", b_images, b_targets, shard_size=3)  # 3 shards: 3 + 3 + 1
    images, targets = load_image_dataset([tmp_path / "png", tmp_path / "st"])
    assert images.shape == (13, 3, 8, 8)
    # Shards keep their order and come after the first directory's images.
    assert torch.equal(images[6:], b_images) and torch.equal(targets[6:], b_targets)
    assert sorted(targets[:6].tolist()) == sorted(a_targets.tolist())
    # A bare directory of shards is accepted too.
    alone, _ = load_image_dataset([tmp_path / "st" / "shards"])
    assert torch.equal(alone, b_images)


def test_different_sizes_need_a_size(tmp_path):
    from PIL import Image

    write_imagefolder(tmp_path / "a", *random_uint8(2, seed=4))
    (tmp_path / "b" / "000").mkdir(parents=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "b" / "000" / "x.png")
    with pytest.raises(InvkitError, match="different sizes"):
        load_image_dataset([tmp_path / "a", tmp_path / "b"])
    images, _ = load_image_dataset([tmp_path / "a", tmp_path / "b"], size=8)
    assert images.shape == (3, 3, 8, 8)
    assert images[-1, :, 4, 4].tolist() == [255, 0, 0]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no images"),
    (lambda p: [(p / "m" / d).mkdir(parents=True) for d in ("001", "cat")] and p / "m",
     "does not start with a class index"),
])
def test_bad_directories_fail_in_one_line(tmp_path, make, message):
    with pytest.raises(InvkitError, match=message) as info:
        load_image_dataset([make(tmp_path)])
    assert "\n" not in str(info.value)


def test_shard_without_targets_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)}, str(tmp_path / "s.safetensors"))
    with pytest.raises(InvkitError, match="lacks the 'images' and 'targets'"):
        load_image_dataset([tmp_path])


def test_to_float01():
    assert to_float01(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]
    assert to_float01(torch.tensor([0.25])).tolist() == [0.25]


def test_digits_test_data_is_the_heldout_split():
    pytest.importorskip("invkit.teachers.digits")
    from invkit.data import load_test_data

    images, targets = load_test_data("digits")
    assert images.shape[1:] == (3, 32, 32) and images.shape[0] == targets.shape[0] > 100
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert set(targets.tolist()) == set(range(10))
