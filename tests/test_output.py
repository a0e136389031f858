"""invkit.output: atomic writes, PNGs and grids, class folder names, the output directory."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from invkit.errors import InvkitError
from invkit.output import (
    atomic_write_bytes, class_dirname, prepare_output_dir, save_grid, save_png, to_uint8, write_json,
)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "file.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["file.bin"]


def test_atomic_write_interrupted_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"old")

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]  # the temporary file was removed


def test_write_json_converts_tensors_and_nan(tmp_path):
    write_json(tmp_path / "r.json", {"t": torch.tensor([1.5, 2.0]), "s": torch.tensor(3),
                                     "nan": float("nan"), "p": tmp_path, "tuple": (1, 2)})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data == {"t": [1.5, 2.0], "s": 3, "nan": "nan", "p": str(tmp_path), "tuple": [1, 2]}


def test_save_png_round_trips_pixels(tmp_path):
    image = torch.rand(3, 5, 7)
    save_png(tmp_path / "a.png", image)
    with Image.open(tmp_path / "a.png") as png:
        assert png.size == (7, 5) and png.mode == "RGB"
        pixels = torch.from_numpy(np.array(png)).permute(2, 0, 1)
    assert torch.equal(pixels, to_uint8(image))
    # Rounded like torchvision.utils.save_image (half up), clamped to [0, 1].
    assert to_uint8(torch.tensor([0.5, -1.0, 2.0, 1 / 255])).tolist() == [128, 0, 255, 1]


def test_save_grid_layout(tmp_path):
    save_grid(tmp_path / "g.png", torch.zeros(5, 3, 4, 4))  # 3 per row, 2 rows, padding 2
    with Image.open(tmp_path / "g.png") as png:
        assert png.size == (3 * 6 + 2, 2 * 6 + 2)
    save_grid(tmp_path / "h.png", torch.zeros(5, 3, 4, 4, dtype=torch.uint8), nrow=5)
    with Image.open(tmp_path / "h.png") as png:
        assert png.size == (5 * 6 + 2, 6 + 2)


def test_class_dirname_pads_and_sanitises():
    assert class_dirname(7, 10, "cat") == "007_cat"
    assert class_dirname(7, 10, None) == "007"
    assert class_dirname(42, 1000, "tench, Tinca tinca") == "042_tench_Tinca_tinca"
    assert class_dirname(42, 20000, None) == "00042"
    assert class_dirname(3, 10, "../../etc/passwd") == "003_etc_passwd"
    assert class_dirname(3, 10, "///") == "003"
    names = [class_dirname(i, 1000, None) for i in (5, 50, 500)]
    assert names == sorted(names)  # lexical order is class order


def _fake_run(out):
    """What a run leaves: its state first, then images and the manifest."""
    (out / "state").mkdir(parents=True)
    (out / "state" / "run.json").write_text('{"version": 1, "plan": "abc"}')
    (out / "images" / "000").mkdir(parents=True)
    (out / "images" / "000" / "x.png").write_bytes(b"x")
    (out / "manifest.jsonl").write_text("")


def test_prepare_output_dir_refuses_non_empty(tmp_path):
    out = prepare_output_dir(tmp_path / "run")
    assert out.is_dir()
    prepare_output_dir(out)  # empty: fine
    _fake_run(out)
    with pytest.raises(InvkitError, match="--resume.*--overwrite"):
        prepare_output_dir(out)
    assert prepare_output_dir(out, resume=True) == out
    assert (out / "manifest.jsonl").exists()
    with pytest.raises(InvkitError, match="cannot be used together"):
        prepare_output_dir(out, overwrite=True, resume=True)


def test_prepare_output_dir_overwrite_removes_the_run(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    (out / "eval.json").write_text("{}")
    (out / ".grid.png.k3j.tmp").write_bytes(b"")  # left by a killed atomic write
    prepare_output_dir(out, overwrite=True)
    assert os.listdir(out) == []


def test_prepare_output_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(InvkitError, match="not a directory"):
        prepare_output_dir(tmp_path / "f")


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    from invkit.output import atomic_write_bytes

    old = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_next_free_dir_names_the_first_free_numbered_directory(tmp_path):
    from invkit.output import next_free_dir

    run = tmp_path / "generations" / "digits"
    assert next_free_dir(run) == run  # missing: free
    run.mkdir(parents=True)
    assert next_free_dir(run) == run  # empty: free
    (run / "run.json").write_text("{}")
    assert next_free_dir(run) == tmp_path / "generations" / "digits-2"
    (tmp_path / "generations" / "digits-2").mkdir()
    (tmp_path / "generations" / "digits-2" / "x").write_text("")
    assert next_free_dir(run) == tmp_path / "generations" / "digits-3"    # the next number
    (tmp_path / "generations" / "digits-3").write_text("a file, not a directory")
    (tmp_path / "generations" / "digits-5").mkdir()
    assert next_free_dir(run) == tmp_path / "generations" / "digits-4"
    assert not (tmp_path / "generations" / "digits-4").exists()  # nothing created
    assert next_free_dir(str(run)) == tmp_path / "generations" / "digits-4"


def test_refusals_name_at_most_three_entries():
    from invkit.output import _some

    assert _some(["a", "b"]) == "a, b"
    assert _some(["a", "b", "c"]) == "a, b, c"
    assert _some(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more"


def test_overwrite_keeps_the_lock_and_removes_every_run_entry(tmp_path):
    from invkit.lock import LOCK_NAME

    out = tmp_path / "run"
    _fake_run(out)
    (out / LOCK_NAME).write_text("")           # sorts first: the rest is still removed
    (out / "eval.json").write_text("{}")
    prepare_output_dir(out, overwrite=True)
    assert os.listdir(out) == [LOCK_NAME]


def test_remove_run_skips_what_no_run_writes(tmp_path):
    from invkit.output import _remove_run

    out = tmp_path / "run"
    _fake_run(out)
    (out / "A-notes.txt").write_text("mine")   # sorts before every run entry
    _remove_run(out)
    assert os.listdir(out) == ["A-notes.txt"]


def test_a_run_that_cannot_be_removed_is_one_line(tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "run"
    _fake_run(out)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    with pytest.raises(InvkitError) as error:
        prepare_output_dir(out, overwrite=True)
    assert str(error.value) == (f"cannot remove the earlier run in {str(out)!r}: Permission denied "
                                f"({out / 'images'})")
    monkeypatch.setattr(shutil, "rmtree", lambda path: (_ for _ in ()).throw(OSError("odd")))
    with pytest.raises(InvkitError) as error:
        prepare_output_dir(out, overwrite=True)
    assert str(error.value) == f"cannot remove the earlier run in {str(out)!r}: odd"


def test_next_free_dir_of_the_current_directory_numbers_it(tmp_path, monkeypatch):
    from invkit.output import next_free_dir

    run = tmp_path / "digits"
    _fake_run(run)
    monkeypatch.chdir(run)
    assert next_free_dir(".") == tmp_path / "digits-2"


def test_a_run_is_a_directory_whose_state_is_an_object_with_a_plan(tmp_path):
    from invkit.output import is_invkit_run

    state = tmp_path / "state" / "run.json"
    state.parent.mkdir()
    for text, expected in [('{"plan": "a"}', True), ('{"version": 1}', False), ('["plan"]', False),
                           ("{", False), ('{"plan": "\u00e9"}', True)]:
        state.write_text(text, encoding="utf-8")
        assert is_invkit_run(tmp_path) is expected, text


def test_sanitised_names_collapse_strip_and_cut_at_60():
    assert class_dirname(1, 10, "a__b") == "001_a_b"
    assert class_dirname(1, 10, "_.a._") == "001_a"
    assert class_dirname(1, 10, "b" * 70) == "001_" + "b" * 60
    assert class_dirname(1, 10, "x" * 59 + ".y") == "001_" + "x" * 59  # no trailing dot
    assert class_dirname(1, 10, "X-ray boX") == "001_X-ray_boX"      # only '.' and '_' stripped


def test_save_grid_pixels_exactly(tmp_path):
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[1] = 51                                     # uint8 images are read as /255
    save_grid(tmp_path / "g.png", images, nrow=2, padding=1)
    with Image.open(tmp_path / "g.png") as png:
        pixels = np.asarray(png.convert("L"))
    row = [255, 0, 0, 255, 51, 51, 255]                # white padding, black, grey image
    assert pixels.tolist() == [[255] * 7, row, row, [255] * 7]
    save_grid(tmp_path / "one.png", torch.full((1, 3, 2, 2), 0.5))   # one image: itself
    with Image.open(tmp_path / "one.png") as png:
        assert png.size == (2, 2) and png.getpixel((1, 1)) == (128, 128, 128)
    for bad in (torch.zeros(3, 4, 4), torch.zeros(0, 3, 4, 4)):
        with pytest.raises(ValueError) as error:
            save_grid(tmp_path / "bad.png", bad)
        assert str(error.value) == ("expected a non-empty batch shaped (N, C, H, W), got "
                                    f"{tuple(bad.shape)}")


def test_png_bytes_takes_one_or_three_channels(tmp_path):
    import io

    from invkit.output import png_bytes

    grey = png_bytes(torch.full((1, 2, 3), 0.2))
    with Image.open(io.BytesIO(grey)) as png:
        assert (png.mode, png.size, png.getpixel((0, 0))) == ("L", (3, 2), 51)
    for bad in (torch.zeros(2, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(4, 4)):
        with pytest.raises(ValueError) as error:
            png_bytes(bad)
        assert str(error.value) == f"expected an image shaped (1 or 3, H, W), got {tuple(bad.shape)}"


def test_atomic_write_goes_through_a_hidden_temporary_beside_the_file(tmp_path, monkeypatch):
    import re

    from invkit.output import atomic_write_bytes

    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append(src), real_replace(src, dst)))
    path = atomic_write_bytes(tmp_path / "d" / "f.bin", b"x")
    assert path.read_bytes() == b"x"
    (src,) = replaced
    assert os.path.dirname(src) == str(tmp_path / "d")
    assert re.fullmatch(r"\.f\.bin\.[^/]+\.tmp", os.path.basename(src))


def test_atomic_write_failure_raises_its_own_error_even_if_the_temporary_is_gone(tmp_path,
                                                                              monkeypatch):
    from invkit.output import atomic_write_bytes

    def lose(src, dst):
        os.unlink(src)                  # cleanup will find nothing to remove
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", lose)
    with pytest.raises(OSError) as error:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert str(error.value) == "disk gone" and os.listdir(tmp_path) == []


def test_write_json_text_is_exact(tmp_path):
    from invkit.output import write_json

    path = write_json(tmp_path / "r.json", {"b": 1, "a": ["x"]})      # keys keep their order
    assert path.read_bytes() == b'{\n  "b": 1,\n  "a": [\n    "x"\n  ]\n}\n'


def test_to_uint8_scales_by_255_and_rounds_half_up():
    assert to_uint8(torch.tensor([0.99, 0.2])).tolist() == [252, 51]


def test_output_path_refusals_are_exact(tmp_path, monkeypatch):
    from pathlib import Path

    for bad, message in [("  ", "the output path is empty: pass --output DIR")]:
        with pytest.raises(InvkitError) as error:
            prepare_output_dir(bad)
        assert str(error.value) == message
    with pytest.raises(InvkitError) as error:
        prepare_output_dir(tmp_path, overwrite=True, resume=True)
    assert str(error.value) == "--overwrite and --resume cannot be used together: choose one"

    def unreadable(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", unreadable)
    with pytest.raises(InvkitError) as error:
        prepare_output_dir(tmp_path)
    assert str(error.value) == f"cannot read output directory {str(tmp_path)!r}: Permission denied"


def test_prepare_output_dir_refusals_name_the_way_out(tmp_path, monkeypatch):
    import tempfile

    from invkit.output import foreign_entries

    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("")
    with pytest.raises(InvkitError) as error:
        prepare_output_dir(other)
    assert str(error.value) == (
        f"output directory {str(other)!r} is not empty and holds no invkit run state (no "
        "readable state/run.json; it holds a.txt); --resume and --overwrite apply only to a "
        "run's directory: choose another --output")
    run = tmp_path / "run"
    _fake_run(run)
    with pytest.raises(InvkitError) as error:
        prepare_output_dir(run)
    assert str(error.value) == (
        f"output directory {str(run)!r} is not empty; pass --resume to continue the run in it "
        "or --overwrite to replace it (or choose another --output: "
        f"{str(tmp_path / 'run-2')!r} is free)")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(InvkitError) as error:
        prepare_output_dir(run, overwrite=True)
    assert str(error.value) == (
        f"refusing --overwrite: {str(run)!r} also holds files no invkit run wrote (notes.txt); "
        "move them away or choose another --output")
    assert (run / "images").is_dir()            # nothing removed

    # The write probe is a hidden temporary that a killed process may leave: never foreign.
    made, made_paths = [], []
    real_mkstemp = tempfile.mkstemp

    def record(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        made.append(os.path.basename(name))
        made_paths.append(name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", record)
    fresh = prepare_output_dir(tmp_path / "fresh")
    assert len(made) == 1 and made[0].startswith(".invkit-write-test.")
    assert os.path.dirname(made_paths[0]) == str(fresh)     # probed where the run writes
    (fresh / made[0]).write_text("")
    assert foreign_entries(fresh) == []

    def refuse(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("invkit.output.check_writable", refuse)
    with pytest.raises(InvkitError) as error:
        prepare_output_dir(tmp_path / "ro")
    assert str(error.value) == (f"cannot write to output directory {str(tmp_path / 'ro')!r}: "
                                "Permission denied")


def test_write_json_turns_other_objects_into_their_text(tmp_path):
    from decimal import Decimal

    path = write_json(tmp_path / "o.json", {"d": Decimal("1.5"), "e": ValueError("bad")})
    assert json.loads(path.read_text()) == {"d": "1.5", "e": "bad"}
