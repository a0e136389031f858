"""Read generated (or real) image datasets for evaluation and distillation.

:class:`GeneratedImages` is a lazily loading ``torch.utils.data.Dataset`` over any
number of directories (use it with a ``DataLoader``; nothing is decoded up front);
:func:`load_image_dataset` decodes everything into one tensor, for small data.

Two on-disk layouts are read, and any number of directories can be combined:

- **ImageFolder**: one sub-directory per class, named by
  :func:`invkit.output.class_dirname` (``"007_cat"``, ``"0042"``), holding image
  files. The class index is read from the directory name's leading digits, never
  from sorted order, so a class with no images does not shift the others. A
  generated run directory is accepted directly (its ``images/`` folder is used).
  Folders of real images named without digits (``cat/``, ``dog/``) fall back to
  torchvision's convention: sorted order.
- **safetensors shards**: ``shards/shard_XXXXX.safetensors`` (or the shard files
  directly in the directory), each with ``images`` uint8 (N, 3, H, W) and
  ``targets`` int64 (N,).

Example (an ImageFolder and a shard directory, written here with random images):
    >>> import torch
    >>> from safetensors.torch import save
    >>> from invkit.output import atomic_write_bytes, class_dirname, save_png
    >>> names = ["zero", "one"]
    >>> for i in range(6):
    ...     _ = save_png(f"a/{class_dirname(i % 2, 2, names[i % 2])}/{i:03d}.png",
    ...                  torch.rand(3, 32, 32))
    >>> shard = save({"images": torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
    ...               "targets": torch.tensor([0, 1, 0, 1])})
    >>> _ = atomic_write_bytes("b/shard_00000.safetensors", shard)
    >>> data = GeneratedImages(["a", "b"])   # lazy
    >>> len(data), data.classes[:2]
    (10, ['zero', 'one'])
    >>> images, targets = load_image_dataset(["a", "b"])
    >>> images.dtype, images.shape
    (torch.uint8, torch.Size([10, 3, 32, 32]))
    >>> test_images, test_targets = load_test_data("digits")   # the held-out digits
    >>> test_images.shape
    torch.Size([450, 3, 32, 32])
"""

from __future__ import annotations

import bisect
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invkit.errors import InvkitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
_LEADING_DIGITS = re.compile(r"^(\d+)(?:_(.*))?$")
#: The most pixels one image may have (64 megapixels, e.g. 8192 x 8192): far above any
#: classifier's input, far below what exhausts memory when decoded.
MAX_IMAGE_PIXELS = 1 << 26


@dataclass(frozen=True)
class ClassFolder:
    """One class directory of an ImageFolder: its index, name (if any) and path."""

    index: int
    name: str | None
    path: Path


def find_layout(directory: Path) -> tuple[str, Path]:
    """Which layout ``directory`` holds: ``("shards", dir)`` or ``("imagefolder", dir)``.

    Example:
        >>> Path("generations/layout/images/000_zero").mkdir(parents=True)
        >>> find_layout(Path("generations/layout"))
        ('imagefolder', PosixPath('generations/layout/images'))
    """
    directory = Path(directory)
    expected = "expected a generated run directory, an ImageFolder or a shard dir"
    if directory.exists() and not directory.is_dir():
        raise InvkitError(f"data path {str(directory)!r} is a file, not a directory ({expected})")
    if not directory.is_dir():
        raise InvkitError(f"data directory {str(directory)!r} does not exist ({expected})")
    if (directory / "shards").is_dir() and any((directory / "shards").glob("*.safetensors")):
        return "shards", directory / "shards"
    if (directory / "images").is_dir():
        return "imagefolder", directory / "images"
    if any(directory.glob("*.safetensors")):
        return "shards", directory
    if any(p.is_dir() for p in directory.iterdir()):
        return "imagefolder", directory
    raise InvkitError(f"data directory {str(directory)!r} holds no images: expected class "
                      "sub-directories (ImageFolder), images/, or shards/*.safetensors")


def class_folders(root: Path) -> list[ClassFolder]:
    """The class directories under an ImageFolder ``root``, with their class indices.

    Example:
        >>> for name in ("000_zero", "001_one", "002_two"):
        ...     Path("run/images", name).mkdir(parents=True)
        >>> [(c.index, c.name) for c in class_folders(Path("run/images"))][:2]
        [(0, 'zero'), (1, 'one')]
    """
    dirs = sorted((p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)
    parsed = [_LEADING_DIGITS.match(p.name) for p in dirs]
    if dirs and all(parsed):
        folders = [ClassFolder(int(m.group(1)), m.group(2) or None, p) for m, p in zip(parsed, dirs)]
    elif not any(parsed):
        # Real images named by class only: torchvision's ImageFolder convention.
        folders = [ClassFolder(i, p.name, p) for i, p in enumerate(dirs)]
    else:
        bad = next(p.name for m, p in zip(parsed, dirs) if not m)
        raise InvkitError(f"class directory {bad!r} in {str(root)!r} does not start with a "
                          "class index (expected names like '007' or '007_cat', as invkit writes)")
    seen: dict[int, Path] = {}
    for folder in folders:
        if folder.index in seen:
            raise InvkitError(f"class index {folder.index} appears twice in {str(root)!r}: "
                              f"{seen[folder.index].name!r} and {folder.path.name!r}")
        seen[folder.index] = folder.path
    return folders


def _read_image(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # our own limit below is the one that speaks
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            # The header's size, checked before decoding: a small file can claim
            # 100000 x 100000 pixels (tens of GB once decoded).
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvkitError(f"image {str(path)!r} claims {width}x{height} pixels, more "
                                  f"than the {MAX_IMAGE_PIXELS:,} invkit reads per image")
            image = image.convert("RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.array(image, dtype=np.uint8)  # writable: torch.from_numpy needs it
    except Image.DecompressionBombError:
        raise InvkitError(f"image {str(path)!r} claims more than {MAX_IMAGE_PIXELS:,} pixels "
                          "(a decompression bomb, or not an image invkit wrote)") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        # PIL raises SyntaxError/ValueError for some malformed headers.
        raise InvkitError(f"cannot read image {str(path)!r}: {error}") from None


def load_imagefolder(root: Path, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, N x 3 x H x W) and targets (int64) of one ImageFolder directory."""
    return GeneratedImages(root, size=size).tensors()


def load_shards(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and targets of every ``*.safetensors`` shard in ``directory`` (sorted by name)."""
    return GeneratedImages(directory).tensors()


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                              antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


class GeneratedImages(torch.utils.data.Dataset):
    """Generated (or real) images, read lazily from disk: a ``torch.utils.data.Dataset``.

    ``paths``: one directory or several, combined in order; each may be a generated run
    directory (its ``images/`` or ``shards/``), an ImageFolder or a directory of
    safetensors shards. Item ``i`` is ``(image, target)``: ``image`` a uint8 tensor
    ``(3, H, W)`` (or whatever ``transform(image)`` returns), ``target`` an ``int``.
    Nothing is decoded up front: PNGs are read when asked for, shards through
    ``safetensors.safe_open`` one image slice at a time, so a dataset of any size
    costs only its file list and targets in memory. ``size`` resizes every image to
    ``size`` x ``size`` (needed only to mix resolutions).

    Order: the directories in turn; within an ImageFolder, class by class (by index)
    and files sorted by name; within shards, shard by shard (manifest order).

    Class names (``classes``, ``class_to_idx``, ``class_names``) come from the run's
    ``manifest.jsonl`` (original names), else the ImageFolder directory names
    (``007_cat``), else the shards' metadata; ``classes[i]`` is the name of class
    ``i`` (its number as text when no name is known). ``targets`` holds every target
    (int64), known without decoding an image.

    Picklable and safe with ``DataLoader(num_workers=N)``: each worker process opens
    its own shard files.

    Example:
        >>> from invkit.output import class_dirname, save_png
        >>> names = ["zero", "one", "two"]
        >>> for i in range(30):                      # an ImageFolder of random images
        ...     _ = save_png(f"generations/digits/images/{class_dirname(i % 3, 3, names[i % 3])}"
        ...                  f"/{i:03d}.png", torch.rand(3, 32, 32))
        >>> data = GeneratedImages("generations/digits")
        >>> len(data), data.classes[:3]
        (30, ['zero', 'one', 'two'])
        >>> image, target = data[0]
        >>> image.dtype, image.shape, target
        (torch.uint8, torch.Size([3, 32, 32]), 0)
        >>> loader = torch.utils.data.DataLoader(data, batch_size=16, num_workers=0)
        >>> images, targets = next(iter(loader))
        >>> images.shape, targets.dtype
        (torch.Size([16, 3, 32, 32]), torch.int64)
    """

    def __init__(self, paths: Path | str | Sequence[Path | str], transform=None,
                 size: int | None = None):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if not paths:
            raise InvkitError("no data directory given (pass at least one --data DIR)")
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.size = size
        # Segments: ("png", files) for one ImageFolder, ("shard", path) for one shard.
        self._segments: list[tuple[str, Any]] = []
        self._starts: list[int] = []
        targets: list[torch.Tensor] = []
        names: dict[int, str] = {}
        num_classes = 0
        shapes: dict[tuple[int, int], str] = {}
        count = 0
        for directory in self.paths:
            layout, path = find_layout(directory)
            before = count
            if layout == "shards":
                for shard, shard_targets, shape, meta in _scan_shards(path):
                    self._segments.append(("shard", str(shard)))
                    self._starts.append(count)
                    count += len(shard_targets)
                    targets.append(shard_targets)
                    shapes.setdefault(shape, str(directory))
                    num_classes = max(num_classes, int(meta.get("num_classes") or 0))
                    names.update({i: n for i, n in enumerate(meta.get("class_names") or ()) if n})
            else:
                folders = class_folders(path)
                files, folder_targets = [], []
                for folder in folders:
                    for file in sorted(folder.path.iterdir()):
                        if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                            files.append(str(file))
                            folder_targets.append(folder.index)
                names.update({c.index: c.name for c in folders if c.name})
                if files:
                    self._segments.append(("png", tuple(files)))
                    self._starts.append(count)
                    count += len(files)
                    targets.append(torch.tensor(folder_targets, dtype=torch.int64))
                    shapes.setdefault(_png_shape(Path(files[0])), str(directory))
            if count == before:
                raise InvkitError(f"data directory {str(directory)!r} holds no images")
            run_names, run_classes = _run_class_info(path)
            names.update(run_names)
            num_classes = max(num_classes, run_classes)
        if size is None and len(shapes) > 1:
            raise InvkitError("the data directories hold images of different sizes "
                              f"({', '.join(sorted(f'{w}x{h}' for h, w in shapes))}); "
                              "resize them to one size first")
        self.image_shape = (size, size) if size is not None else next(iter(shapes))
        self.targets = torch.cat(targets)
        self.class_names = dict(sorted(names.items()))
        self.num_classes = max([num_classes, int(self.targets.max()) + 1,
                                *(i + 1 for i in self.class_names)])
        self.classes = [self.class_names.get(i, str(i)) for i in range(self.num_classes)]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self._handles: dict[str, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.targets.numel())

    def __getitem__(self, index: int):
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        segment = bisect.bisect_right(self._starts, index) - 1
        kind, ref = self._segments[segment]
        local = index - self._starts[segment]
        if kind == "png":
            array = _read_image(Path(ref[local]), self.size)
            image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
            if tuple(image.shape[1:]) != self.image_shape:
                h, w = self.image_shape
                raise InvkitError(f"images of different sizes: {ref[local]!r} is "
                                  f"{image.shape[2]}x{image.shape[1]}, the others {w}x{h}; "
                                  "resize them to one size first")
        else:
            image = self._shard(ref).get_slice("images")[local:local + 1][0]
            if self.size is not None:
                image = _resize_uint8(image[None], self.size)[0]
        target = int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, target

    def _shard(self, path: str):
        from safetensors import safe_open

        if self._pid != os.getpid():  # a forked worker: never share the parent's handles
            self._handles, self._pid = {}, os.getpid()
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt")
        return self._handles[path]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # open files do not travel to worker processes
        return state

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image decoded at once: (uint8 (N, 3, H, W), int64 targets (N,)).

        For data that fits in memory (what :func:`load_image_dataset` returns);
        ``transform`` is not applied.
        """
        images = []
        for kind, ref in self._segments:
            if kind == "png":
                arrays = [_read_image(Path(file), self.size) for file in ref]
                shapes = {a.shape for a in arrays}
                if len(shapes) > 1:
                    raise InvkitError(
                        f"images in {str(Path(ref[0]).parent.parent)!r} have different sizes "
                        f"({', '.join(sorted(f'{s[1]}x{s[0]}' for s in shapes))}); "
                        "pass a size to resize them to")
                chunk = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            else:
                chunk = self._shard(ref).get_tensor("images")
                if self.size is not None:
                    chunk = _resize_uint8(chunk, self.size)
            images.append(chunk)
        return torch.cat(images), self.targets.clone()

    def __repr__(self) -> str:
        dirs = ", ".join(str(p) for p in self.paths)
        h, w = self.image_shape
        return (f"GeneratedImages({dirs}: {len(self)} images {w}x{h}, "
                f"{self.num_classes} classes)")


def _png_shape(path: Path) -> tuple[int, int]:
    """(H, W) of an image, read from its header only (absurd sizes refused)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # our own limit below is the one that speaks
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        width, height = MAX_IMAGE_PIXELS + 1, 1
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise InvkitError(f"cannot read image {str(path)!r}: {error}") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise InvkitError(f"image {str(path)!r} claims more than the {MAX_IMAGE_PIXELS:,} "
                          "pixels invkit reads per image")
    return height, width


def _scan_shards(directory: Path):
    """``(path, targets, (H, W), metadata)`` of every shard, checked, images not read."""
    from safetensors import SafetensorError, safe_open

    for shard in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                keys = set(handle.keys())
                if not {"images", "targets"} <= keys:
                    raise InvkitError(f"shard {str(shard)!r} lacks the 'images' and 'targets' "
                                      f"tensors (has: {', '.join(sorted(keys)) or 'none'})")
                images = handle.get_slice("images")
                shape, dtype = tuple(images.get_shape()), images.get_dtype()
                targets = handle.get_tensor("targets")
                meta = handle.metadata() or {}
        except (SafetensorError, OSError) as error:
            raise InvkitError(f"cannot read shard {str(shard)!r}: {error}") from None
        if dtype != "U8" or len(shape) != 4 or shape[1] != 3:
            raise InvkitError(f"shard {str(shard)!r}: 'images' must be uint8 (N, 3, H, W), "
                              f"got {dtype} {shape}")
        if tuple(targets.shape) != (shape[0],):
            raise InvkitError(f"shard {str(shard)!r}: 'targets' must have shape "
                              f"({shape[0]},), got {tuple(targets.shape)}")
        try:
            info = json.loads(meta.get("invkit", "{}"))
        except ValueError:
            info = {}
        yield shard, targets.to(torch.int64), (shape[2], shape[3]), info


def _run_class_info(path: Path) -> tuple[dict[int, str], int]:
    """Class names and count recorded by the run that made ``path`` (its manifest, run.json)."""
    run_dir = path.parent if path.name in ("images", "shards") else path
    names: dict[int, str] = {}
    manifest = run_dir / "manifest.jsonl"
    if manifest.is_file():
        with manifest.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line torn by a kill: the rest still names the classes
                if isinstance(row, dict) and row.get("class_name") and "target" in row:
                    names[int(row["target"])] = str(row["class_name"])
    num_classes = 0
    run_json = run_dir / "run.json"
    if run_json.is_file():
        try:
            record = json.loads(run_json.read_text(encoding="utf-8"))
            num_classes = int(record.get("num_classes") or 0)
            names.update({i: n for i, n in enumerate(record.get("class_names") or ()) if n})
        except (ValueError, TypeError, AttributeError):
            pass
    return names, num_classes


def load_image_dataset(dirs: Sequence[Path | str], size: int | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``dirs`` decoded into memory: (uint8 (N, 3, H, W), int64 targets (N,)).

    A thin wrapper over :class:`GeneratedImages` (same order, same checks); prefer the
    dataset itself for anything large, since this holds every image at once.

    Example:
        >>> from safetensors.torch import save
        >>> from invkit.output import atomic_write_bytes, save_png
        >>> _ = save_png("run_png/images/003/00000_000.png", torch.rand(3, 32, 32))
        >>> shard = save({"images": torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
        ...               "targets": torch.tensor([1, 2])})
        >>> _ = atomic_write_bytes("run_shards/shards/shard_00000.safetensors", shard)
        >>> images, targets = load_image_dataset(["run_png", "run_shards"])
        >>> images.shape, targets.tolist()
        (torch.Size([3, 3, 32, 32]), [3, 1, 2])
    """
    return GeneratedImages(dirs, size=size).tensors()


def dataset_class_names(dirs: Sequence[Path | str]) -> dict[int, str]:
    """Class names of ``dirs`` (``"007_cat"`` -> ``{7: "cat"}``; see :class:`GeneratedImages`)."""
    return GeneratedImages(dirs).class_names


def load_test_data(spec: str | Path, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images to test a student on: ``"digits"`` (the held-out digits split) or a directory.

    Images come back as uint8 from a directory, or float in [0, 1] for ``digits``;
    :func:`to_float01` accepts both.

    Example:
        >>> images, targets = load_test_data("digits")
        >>> images.dtype, images.shape, targets[:3].tolist()
        (torch.float32, torch.Size([450, 3, 32, 32]), [1, 4, 8])
    """
    if str(spec) == "digits":
        from invkit.teachers.digits import digits_dataset

        images01, targets = digits_dataset("heldout")
        return images01, targets.to(torch.int64)
    return load_image_dataset([spec], size=size)


def to_float01(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] (or float images already in [0, 1]) as float32 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


__all__ = [
    "ClassFolder", "GeneratedImages", "find_layout", "class_folders", "load_imagefolder",
    "load_shards",
    "load_image_dataset", "dataset_class_names", "load_test_data", "to_float01",
]
