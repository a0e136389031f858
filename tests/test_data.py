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


# -- GeneratedImages: the lazily loading Dataset ------------------------------------------


def _run_dir(tmp_path, fmt, images, targets, names):
    """A directory laid out as a run writes it: images/ or shards/, plus manifest.jsonl."""
    import json

    from tests.tiny_classifier import CLASSES

    root = tmp_path / fmt
    if fmt == "png":
        write_imagefolder(root, images, targets, names={t: names[t] for t in names})
    else:
        write_shards(root, images, targets, shard_size=4)
    rows = [{"file": "x", "target": t, "class_name": names.get(t), "batch": 0, "index": i}
            for i, t in enumerate(targets.tolist())]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "run.json").write_text(json.dumps({"num_classes": CLASSES}))
    return root


@pytest.mark.parametrize("fmt", ["png", "safetensors"])
def test_generated_images_match_the_files_exactly(tmp_path, fmt):
    from invkit.data import GeneratedImages

    images, targets = random_uint8(10, seed=11)
    names = {t: f"name {t}, long" for t in targets.tolist()}  # original, unsanitised names
    data = GeneratedImages(_run_dir(tmp_path, fmt, images, targets, names))
    assert len(data) == 10 and data.image_shape == (8, 8)
    got = [data[i] for i in range(len(data))]
    assert all(image.dtype == torch.uint8 and image.shape == (3, 8, 8) for image, _ in got)
    assert all(isinstance(target, int) for _, target in got)
    assert torch.equal(data.targets, torch.tensor([t for _, t in got]))
    pairs = sorted((t, i.flatten().tolist()) for i, t in got)
    assert pairs == sorted((t, i.flatten().tolist()) for i, t in zip(images, targets.tolist()))
    if fmt == "safetensors":  # shards keep the written order
        assert torch.equal(torch.stack([i for i, _ in got]), images)
        assert data.targets.tolist() == targets.tolist()
    assert data.num_classes == 10 and len(data.classes) == 10
    for t in targets.tolist():
        assert data.classes[t] == f"name {t}, long" and data.class_to_idx[data.classes[t]] == t
    assert data[-1][1] == got[-1][1]
    with pytest.raises(IndexError):
        data[10]


def test_generated_images_work_with_dataloader_workers(tmp_path):
    from torch.utils.data import DataLoader

    from invkit.data import GeneratedImages

    a_images, a_targets = random_uint8(6, seed=12)
    b_images, b_targets = random_uint8(9, seed=13)
    write_imagefolder(tmp_path / "png", a_images, a_targets)
    write_shards(tmp_path / "st", b_images, b_targets, shard_size=4)
    data = GeneratedImages([tmp_path / "png", tmp_path / "st"])
    data[7]  # opens a shard in this process: workers must not reuse the handle
    loader = DataLoader(data, batch_size=4, num_workers=2)
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    targets = torch.cat([b[1] for b in batches])
    expected_images, expected_targets = load_image_dataset([tmp_path / "png", tmp_path / "st"])
    assert torch.equal(images, expected_images) and torch.equal(targets, expected_targets)
    assert torch.equal(images[6:], b_images)


def test_generated_images_transform_and_size(tmp_path):
    from invkit.data import GeneratedImages

    images, targets = random_uint8(3, seed=14)
    write_shards(tmp_path, images, targets, shard_size=2)
    data = GeneratedImages(tmp_path, transform=to_float01)
    assert torch.equal(data[2][0], images[2].float() / 255)
    resized = GeneratedImages(tmp_path, size=4)
    assert resized[0][0].shape == (3, 4, 4) and resized.tensors()[0].shape == (3, 3, 4, 4)
    assert torch.equal(torch.stack([resized[i][0] for i in range(3)]), resized.tensors()[0])
