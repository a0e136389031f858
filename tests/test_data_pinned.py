"""invkit.data pinned exactly: layouts, class folders, shards, run metadata and every refusal.

Each refusal's whole message is compared, and every value (targets, names, shapes, pixels)
against an independent computation, so a changed literal, bound or branch fails a test.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

import invkit.data as data
from invkit.data import (
    ClassFolder, GeneratedImages, class_folders, dataset_class_names, find_layout,
    load_image_dataset, load_imagefolder, load_shards, load_test_data, to_float01,
)
from invkit.errors import InvkitError

EXPECTED = "expected a generated run directory, an ImageFolder or a shard dir"


def png(path, array):
    """Write ``array`` (H, W, 3 uint8) as a PNG at ``path`` (parents made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def pixels(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def shard(path, images, targets, metadata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(save({"images": images, "targets": targets}, metadata=metadata))
    return path


def u8(n, h, w, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=gen, dtype=torch.uint8)


# ----------------------------------------------------------------------------- find_layout


def test_find_layout_refusals_are_exact(tmp_path):
    """A file, a missing path and an image-less directory: each refusal's whole text."""
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(InvkitError) as err:
        find_layout(file)
    assert str(err.value) == f"data path {str(file)!r} is a file, not a directory ({EXPECTED})"
    with pytest.raises(InvkitError) as err:
        find_layout(tmp_path / "missing")
    assert str(err.value) == (f"data directory {str(tmp_path / 'missing')!r} does not exist "
                              f"({EXPECTED})")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(InvkitError) as err:
        find_layout(str(empty))
    assert str(err.value) == (f"data directory {str(empty)!r} holds no images: expected class "
                              "sub-directories (ImageFolder), images/, or shards/*.safetensors")


def test_find_layout_picks_each_layout_in_order(tmp_path):
    """shards/ with shards, then images/, then shards in place, then class sub-directories."""
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "shards").mkdir()
    assert find_layout(run) == ("imagefolder", run / "images")  # shards/ is empty
    (run / "shards" / "shard_00000.safetensors").write_bytes(b"")
    assert find_layout(run) == ("shards", run / "shards")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "cls").mkdir()
    (flat / "a.safetensors").write_bytes(b"")
    assert find_layout(flat) == ("shards", flat)
    folder = tmp_path / "folder"
    (folder / "shards").mkdir(parents=True)  # an empty shards/ is only a class folder
    assert find_layout(folder) == ("imagefolder", folder)


# ----------------------------------------------------------------------------- class_folders


def test_class_folders_parse_indices_and_names(tmp_path):
    """Indices from leading digits, names after '_', hidden dirs and files skipped."""
    for name in ("010_ten", "0042", "002_", "001_two_words", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "003_file").write_text("x")
    assert class_folders(tmp_path) == [
        ClassFolder(1, "two_words", tmp_path / "001_two_words"),
        ClassFolder(2, None, tmp_path / "002_"),
        ClassFolder(42, None, tmp_path / "0042"),
        ClassFolder(10, "ten", tmp_path / "010_ten"),
    ]
    assert class_folders(tmp_path / ".hidden") == []


def test_class_folders_without_digits_use_sorted_order(tmp_path):
    for name in ("dog", "cat", "bird"):
        (tmp_path / name).mkdir()
    assert [(c.index, c.name, c.path.name) for c in class_folders(tmp_path)] == [
        (0, "bird", "bird"), (1, "cat", "cat"), (2, "dog", "dog")]


def test_class_folders_refusals_are_exact(tmp_path):
    mixed = tmp_path / "mixed"
    for name in ("001_a", "cat", "zebra"):
        (mixed / name).mkdir(parents=True)
    with pytest.raises(InvkitError) as err:
        class_folders(mixed)
    assert str(err.value) == (f"class directory 'cat' in {str(mixed)!r} does not start with a "
                              "class index (expected names like '007' or '007_cat', as invkit "
                              "writes)")
    twice = tmp_path / "twice"
    for name in ("7_a", "007_b", "008"):
        (twice / name).mkdir(parents=True)
    with pytest.raises(InvkitError) as err:
        class_folders(twice)
    assert str(err.value) == (f"class index 7 appears twice in {str(twice)!r}: '007_b' and '7_a'")


# ----------------------------------------------------------------------------- images


def test_read_image_resizes_with_pil_bilinear(tmp_path):
    """size resizes exactly as PIL's bilinear; no size keeps the pixels."""
    array = pixels(6, 4, 1)
    path = png(tmp_path / "a.png", array)
    assert np.array_equal(data._read_image(path, None), array)
    expected = np.array(Image.fromarray(array).resize((5, 5), Image.BILINEAR))
    got = data._read_image(path, 5)
    assert got.dtype == np.uint8 and got.flags.writeable
    assert np.array_equal(got, expected)
    square = png(tmp_path / "s.png", pixels(5, 5, 2))
    assert np.array_equal(data._read_image(square, 5), pixels(5, 5, 2))


def test_read_image_grey_becomes_rgb(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.full((2, 3), 7, dtype=np.uint8), mode="L").save(path)
    assert np.array_equal(data._read_image(path, None), np.full((2, 3, 3), 7, dtype=np.uint8))


def test_pixel_limit_is_64_megapixels_and_inclusive(tmp_path, monkeypatch):
    """At the limit an image is read, one pixel past it is refused (read and header check)."""
    assert data.MAX_IMAGE_PIXELS == 67108864
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 1200)
    ok = png(tmp_path / "ok.png", pixels(30, 40, 0))
    big = png(tmp_path / "big.png", pixels(1, 1201, 0))
    assert data._read_image(ok, None).shape == (30, 40, 3)
    assert data._png_shape(ok) == (30, 40)
    with pytest.raises(InvkitError) as err:
        data._read_image(big, None)
    assert str(err.value) == (f"image {str(big)!r} claims 1201x1 pixels, more than the 1,200 "
                              "invkit reads per image")
    with pytest.raises(InvkitError) as err:
        data._png_shape(big)
    assert str(err.value) == (f"image {str(big)!r} claims more than the 1,200 pixels invkit "
                              "reads per image")


def test_decompression_bombs_are_refused_in_one_line(tmp_path, monkeypatch):
    """PIL's own bomb error (past twice its limit) becomes the same one-line refusal."""
    path = png(tmp_path / "bomb.png", pixels(10, 10, 0))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    with pytest.raises(InvkitError) as err:
        data._read_image(path, None)
    assert str(err.value) == (f"image {str(path)!r} claims more than 67,108,864 pixels "
                              "(a decompression bomb, or not an image invkit wrote)")
    with pytest.raises(InvkitError) as err:
        data._png_shape(path)
    assert str(err.value) == (f"image {str(path)!r} claims more than the 67,108,864 pixels "
                              "invkit reads per image")


def test_unreadable_images_name_the_file_and_the_cause(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"not an image")
    try:
        Image.open(path)
    except Exception as error:  # noqa: BLE001 - the cause PIL gives, whatever it is
        cause = str(error)
    expected = f"cannot read image {str(path)!r}: {cause}"
    for read in (lambda: data._read_image(path, None), lambda: data._png_shape(path)):
        with pytest.raises(InvkitError) as err:
            read()
        assert str(err.value) == expected


def test_resize_uint8_matches_antialiased_bilinear():
    images = u8(2, 8, 4, 3)
    same = data._resize_uint8(images, 8)
    expected = torch.nn.functional.interpolate(images.float(), size=(8, 8), mode="bilinear",
                                               antialias=True, align_corners=False)
    assert same.dtype == torch.uint8 and same.shape == (2, 3, 8, 8)
    assert torch.equal(same, expected.round().clamp(0, 255).to(torch.uint8))
    wide = u8(1, 4, 8, 4)
    assert data._resize_uint8(wide, 8).shape == (1, 3, 8, 8)
    square = u8(1, 4, 4, 5)
    assert data._resize_uint8(square, 4) is square
    down = u8(1, 8, 8, 6)
    expected = torch.nn.functional.interpolate(down.float(), size=(3, 3), mode="bilinear",
                                               antialias=True, align_corners=False)
    assert torch.equal(data._resize_uint8(down, 3), expected.round().to(torch.uint8))
    small = data._resize_uint8(torch.full((1, 3, 4, 4), 255, dtype=torch.uint8), 2)
    assert torch.equal(small, torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))


# ----------------------------------------------------------------------------- shards


def test_scan_shards_reads_targets_shape_and_metadata(tmp_path):
    meta = {"invkit": json.dumps({"num_classes": 4, "class_names": ["a", "", "c"]})}
    shard(tmp_path / "b.safetensors", u8(1, 5, 7, 0), torch.tensor([3], dtype=torch.int32))
    shard(tmp_path / "a.safetensors", u8(2, 5, 7, 1), torch.tensor([1, 2]), meta)
    shard(tmp_path / "c.safetensors", u8(1, 5, 7, 2), torch.tensor([0]), {"invkit": "{bad"})
    scanned = list(data._scan_shards(tmp_path))
    assert [s[0].name for s in scanned] == ["a.safetensors", "b.safetensors", "c.safetensors"]
    assert [s[1].tolist() for s in scanned] == [[1, 2], [3], [0]]
    assert all(s[1].dtype == torch.int64 for s in scanned)
    assert [s[2] for s in scanned] == [(5, 7)] * 3
    assert [s[3] for s in scanned] == [{"num_classes": 4, "class_names": ["a", "", "c"]}, {}, {}]


def test_shard_refusals_are_exact(tmp_path):
    """Missing tensors, wrong dtype or rank or channels, wrong targets, unreadable file."""
    def refusal(name, tensors):
        (tmp_path / name).mkdir()
        (tmp_path / name / "s.safetensors").write_bytes(save(tensors))
        with pytest.raises(InvkitError) as err:
            list(data._scan_shards(tmp_path / name))
        return str(err.value).replace(repr(str(tmp_path / name / "s.safetensors")), "S")

    extra = {"images": u8(1, 2, 2, 0), "z": torch.zeros(1), "b": torch.zeros(1)}
    assert refusal("keys", extra) == (
        "shard S lacks the 'images' and 'targets' tensors (has: b, images, z)")
    assert refusal("none", {}) == "shard S lacks the 'images' and 'targets' tensors (has: none)"
    targets = torch.tensor([0])
    assert refusal("dtype", {"images": torch.zeros(1, 3, 2, 2), "targets": targets}) == (
        "shard S: 'images' must be uint8 (N, 3, H, W), got F32 (1, 3, 2, 2)")
    assert refusal("rank", {"images": torch.zeros(3, 2, 2, dtype=torch.uint8),
                            "targets": targets}) == (
        "shard S: 'images' must be uint8 (N, 3, H, W), got U8 (3, 2, 2)")
    assert refusal("channels", {"images": torch.zeros(1, 1, 2, 2, dtype=torch.uint8),
                                "targets": targets}) == (
        "shard S: 'images' must be uint8 (N, 3, H, W), got U8 (1, 1, 2, 2)")
    assert refusal("targets", {"images": u8(2, 2, 2, 0), "targets": targets}) == (
        "shard S: 'targets' must have shape (2,), got (1,)")
    assert refusal("targets2d", {"images": u8(1, 2, 2, 0), "targets": targets[None]}) == (
        "shard S: 'targets' must have shape (1,), got (1, 1)")
    (tmp_path / "broken").mkdir()
    bad = tmp_path / "broken" / "s.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    from safetensors import safe_open
    try:
        safe_open(str(bad), framework="pt")
    except Exception as error:  # noqa: BLE001 - the cause safetensors gives
        cause = str(error)
    with pytest.raises(InvkitError) as err:
        list(data._scan_shards(tmp_path / "broken"))
    assert str(err.value) == f"cannot read shard {str(bad)!r}: {cause}"


# ----------------------------------------------------------------------------- run metadata


def test_run_class_info_reads_manifest_then_run_json(tmp_path):
    """Torn or foreign manifest lines are skipped; run.json's names win, empty ones do not."""
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    rows = [{"target": 1, "class_name": "one"}, {"target": 2, "class_name": ""},
            {"class_name": "no target"}, [1, 2], {"target": "3", "class_name": 33}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"target": 4, "class_na'
    (run / "manifest.jsonl").write_text(text, encoding="utf-8")
    assert data._run_class_info(run / "images") == ({1: "one", 3: "33"}, 0)
    assert data._run_class_info(run / "shards") == ({1: "one", 3: "33"}, 0)
    assert data._run_class_info(run) == ({1: "one", 3: "33"}, 0)
    (run / "run.json").write_text(json.dumps({"num_classes": 12,
                                              "class_names": ["zero", "", "two", "three"]}))
    assert data._run_class_info(run / "images") == ({1: "one", 3: "three", 0: "zero", 2: "two"},
                                                    12)
    (run / "run.json").write_text(json.dumps({"num_classes": None, "class_names": None}))
    assert data._run_class_info(run) == ({1: "one", 3: "33"}, 0)
    for broken in ("{not json", "[1, 2]", '{"num_classes": "many"}', '{"class_names": 5}'):
        (run / "run.json").write_text(broken)
        assert data._run_class_info(run) == ({1: "one", 3: "33"}, 0)
    assert data._run_class_info(tmp_path / "elsewhere" / "images") == ({}, 0)


# ----------------------------------------------------------------------------- GeneratedImages


def imagefolder(root, arrays_by_class):
    for cls, arrays in arrays_by_class.items():
        for i, array in enumerate(arrays):
            png(root / cls / f"{i:03d}.png", array)
    return root


def test_generated_images_combine_folders_and_shards_exactly(tmp_path):
    """Order, targets, pixels, names, classes and repr of a PNG run plus a shard dir."""
    a = [pixels(4, 6, s) for s in range(3)]
    run = tmp_path / "run"
    imagefolder(run / "images", {"002_two": [a[0], a[1]], "000": [a[2]]})
    (run / "images" / "000" / "skip.txt").write_text("x")
    (run / "images" / "000" / "dir.png").mkdir()
    png(run / "images" / "000" / "upper.PNG", a[1])
    (run / "manifest.jsonl").write_text(json.dumps({"target": 0, "class_name": "zero"}) + "\n")
    shards = tmp_path / "sh"
    s0 = u8(2, 4, 6, 7)
    meta = {"invkit": json.dumps({"num_classes": 6, "class_names": [None, "uno"]})}
    shard(shards / "shard_00001.safetensors", u8(1, 4, 6, 8), torch.tensor([4]))
    shard(shards / "shard_00000.safetensors", s0, torch.tensor([1, 0]), meta)
    dataset = GeneratedImages([run, str(shards)])
    assert dataset.paths == [run, shards]
    assert len(dataset) == 7
    assert dataset.targets.tolist() == [0, 0, 2, 2, 1, 0, 4]
    assert dataset.targets.dtype == torch.int64
    assert dataset.image_shape == (4, 6)
    assert dataset.class_names == {0: "zero", 1: "uno", 2: "two"}
    assert dataset.num_classes == 6
    assert dataset.classes == ["zero", "uno", "two", "3", "4", "5"]
    assert dataset.class_to_idx == {"zero": 0, "uno": 1, "two": 2, "3": 3, "4": 4, "5": 5}
    expected = [a[2], a[1], a[0], a[1]]
    for i, array in enumerate(expected):
        image, target = dataset[i]
        assert image.dtype == torch.uint8 and image.is_contiguous()
        assert torch.equal(image, torch.from_numpy(array).permute(2, 0, 1))
        assert type(target) is int and target == dataset.targets[i]
    assert torch.equal(dataset[4][0], s0[0]) and torch.equal(dataset[5][0], s0[1])
    assert dataset[-1][1] == 4 and torch.equal(dataset[-7][0], dataset[0][0])
    images, targets = dataset.tensors()
    assert torch.equal(images, torch.stack([dataset[i][0] for i in range(7)]))
    assert torch.equal(targets, dataset.targets) and targets is not dataset.targets
    assert repr(dataset) == f"GeneratedImages({run}, {shards}: 7 images 6x4, 6 classes)"
    for bad in (7, -8):
        with pytest.raises(IndexError) as err:
            dataset[bad]
        assert str(err.value) == f"index {bad} out of range for 7 images"


def test_generated_images_num_classes_from_targets_and_run_json(tmp_path):
    imagefolder(tmp_path / "r" / "images", {"003": [pixels(2, 2, 0)]})
    dataset = GeneratedImages(tmp_path / "r")
    assert dataset.num_classes == 4 and dataset.classes == ["0", "1", "2", "3"]
    (tmp_path / "r" / "run.json").write_text(json.dumps({"num_classes": 5,
                                                         "class_names": ["", "b"]}))
    dataset = GeneratedImages(str(tmp_path / "r"))
    assert dataset.num_classes == 5 and dataset.classes == ["0", "b", "2", "3", "4"]
    assert dataset_class_names([tmp_path / "r"]) == {1: "b"}
    names = tmp_path / "names"
    imagefolder(names, {"000": [pixels(2, 2, 0)]})
    (names / "009_nine").mkdir()
    dataset = GeneratedImages(names)
    assert dataset.num_classes == 10 and dataset.classes[9] == "nine"


def test_generated_images_refusals_are_exact(tmp_path):
    with pytest.raises(InvkitError) as err:
        GeneratedImages([])
    assert str(err.value) == "no data directory given (pass at least one --data DIR)"
    empty = tmp_path / "empty"
    (empty / "000").mkdir(parents=True)
    with pytest.raises(InvkitError) as err:
        GeneratedImages(empty)
    assert str(err.value) == f"data directory {str(empty)!r} holds no images"
    a = imagefolder(tmp_path / "a", {"000": [pixels(4, 6, 0)]})
    b = imagefolder(tmp_path / "b", {"000": [pixels(5, 5, 0)]})
    c = tmp_path / "c"
    shard(c / "s.safetensors", u8(1, 3, 2, 0), torch.tensor([0]))
    with pytest.raises(InvkitError) as err:
        GeneratedImages([a, b, a, c])
    assert str(err.value) == ("the data directories hold images of different sizes "
                              "(2x3, 5x5, 6x4); resize them to one size first")
    with pytest.raises(InvkitError) as err:
        GeneratedImages([b, a])
    assert str(err.value) == ("the data directories hold images of different sizes "
                              "(5x5, 6x4); resize them to one size first")


def test_generated_images_size_resizes_folders_and_shards(tmp_path):
    array = pixels(4, 6, 0)
    a = imagefolder(tmp_path / "a", {"001": [array]})
    s = u8(1, 6, 2, 1)
    shard(tmp_path / "b" / "s.safetensors", s, torch.tensor([0]))
    dataset = GeneratedImages([a, tmp_path / "b"], size=3)
    assert dataset.image_shape == (3, 3) and dataset.size == 3
    expected = np.array(Image.fromarray(array).resize((3, 3), Image.BILINEAR))
    assert torch.equal(dataset[0][0], torch.from_numpy(expected).permute(2, 0, 1))
    assert torch.equal(dataset[1][0], data._resize_uint8(s, 3)[0])
    images, targets = dataset.tensors()
    assert torch.equal(images[0], dataset[0][0]) and torch.equal(images[1], dataset[1][0])
    assert targets.tolist() == [1, 0]
    images, _ = load_image_dataset([a, tmp_path / "b"], size=3)
    assert images.shape == (2, 3, 3, 3)


def test_generated_images_transform_gets_the_uint8_image(tmp_path):
    a = imagefolder(tmp_path / "a", {"000": [pixels(2, 2, 0)]})
    seen = []
    dataset = GeneratedImages(a, transform=lambda image: seen.append(image) or "done")
    assert dataset[0] == ("done", 0)
    assert torch.equal(seen[0], torch.from_numpy(pixels(2, 2, 0)).permute(2, 0, 1))
    assert dataset.transform is not None
    assert torch.equal(dataset.tensors()[0][0], seen[0])  # tensors() skips the transform


def test_mixed_sizes_inside_one_folder_are_refused_when_read(tmp_path):
    """The first file sets the size; a later different one is refused by [] and tensors()."""
    a = imagefolder(tmp_path / "a", {"000": [pixels(4, 6, 0), pixels(5, 3, 0)],
                                     "001": [pixels(4, 6, 1)]})
    dataset = GeneratedImages(a)
    other = str(a / "000" / "001.png")
    with pytest.raises(InvkitError) as err:
        dataset[1]
    assert str(err.value) == (f"images of different sizes: {other!r} is 3x5, the others 6x4; "
                              "resize them to one size first")
    with pytest.raises(InvkitError) as err:
        dataset.tensors()
    assert str(err.value) == (f"images in {str(a)!r} have different sizes (3x5, 6x4); "
                              "pass a size to resize them to")
    assert dataset[2][1] == 1


def test_generated_images_pickle_without_open_handles(tmp_path):
    shard(tmp_path / "s.safetensors", u8(2, 2, 2, 0), torch.tensor([0, 1]))
    dataset = GeneratedImages(tmp_path)
    first = dataset[1][0]
    assert list(dataset._handles) == [str(tmp_path / "s.safetensors")]
    state = dataset.__getstate__()
    assert state["_handles"] == {} and state["targets"] is dataset.targets
    assert state["paths"] == [tmp_path] and state["_pid"] == os.getpid()
    assert len(dataset._handles) == 1  # the dataset's own handles stay open
    copy = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(copy[1][0], first) and copy.classes == ["0", "1"]


def test_a_forked_worker_opens_its_own_shard_handles(tmp_path):
    shard(tmp_path / "s.safetensors", u8(1, 2, 2, 0), torch.tensor([0]))
    dataset = GeneratedImages(tmp_path)
    handle = dataset._shard(str(tmp_path / "s.safetensors"))
    assert dataset._shard(str(tmp_path / "s.safetensors")) is handle
    dataset._pid = -1  # as if forked from another process
    fresh = dataset._shard(str(tmp_path / "s.safetensors"))
    assert fresh is not handle and dataset._pid == os.getpid()
    assert list(dataset._handles) == [str(tmp_path / "s.safetensors")]


def test_loaders_are_the_dataset_tensors(tmp_path):
    array = pixels(3, 3, 0)
    a = imagefolder(tmp_path / "a", {"001": [array]})
    images, targets = load_imagefolder(a)
    assert torch.equal(images, torch.from_numpy(array).permute(2, 0, 1)[None])
    assert targets.tolist() == [1]
    images, _ = load_imagefolder(a, size=2)
    assert images.shape == (1, 3, 2, 2)
    s = u8(2, 3, 3, 0)
    shard(tmp_path / "b" / "shard_00000.safetensors", s, torch.tensor([1, 0]))
    images, targets = load_shards(tmp_path / "b")
    assert torch.equal(images, s) and targets.tolist() == [1, 0]
    images, targets = load_test_data(tmp_path / "b", size=2)
    assert images.shape == (2, 3, 2, 2) and targets.tolist() == [1, 0]
    images, targets = load_test_data(str(tmp_path / "b"))
    assert torch.equal(images, s)


def test_digits_test_data_is_float_with_int64_targets():
    images, targets = load_test_data("digits")
    assert images.dtype == torch.float32 and images.shape == (450, 3, 32, 32)
    assert targets.dtype == torch.int64 and targets[:3].tolist() == [1, 4, 8]


def test_to_float01_divides_uint8_only():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.equal(to_float01(images), torch.tensor([0.0, 0.2, 1.0]))
    assert to_float01(images).dtype == torch.float32
    halves = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert torch.equal(to_float01(halves), torch.tensor([0.5, 2.0]))
    assert to_float01(halves).dtype == torch.float32
