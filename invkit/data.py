"""Load generated (or real) image datasets into tensors for evaluation and distillation.

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

Example:
    >>> images, targets = load_image_dataset(["generations/a", "generations/b"])
    >>> images.dtype, images.shape
    (torch.uint8, torch.Size([2000, 3, 32, 32]))
    >>> test_images, test_targets = load_test_data("digits")   # the held-out digits
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
        >>> find_layout(Path("generations/digits"))
        ('imagefolder', PosixPath('generations/digits/images'))
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
            return np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise InvkitError(f"image {str(path)!r} claims more than {MAX_IMAGE_PIXELS:,} pixels "
                          "(a decompression bomb, or not an image invkit wrote)") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        # PIL raises SyntaxError/ValueError for some malformed headers.
        raise InvkitError(f"cannot read image {str(path)!r}: {error}") from None


def load_imagefolder(root: Path, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, N x 3 x H x W) and targets (int64) of one ImageFolder directory."""
    arrays, targets = [], []
    for folder in class_folders(root):
        for file in sorted(folder.path.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                arrays.append(_read_image(file, size))
                targets.append(folder.index)
    if not arrays:
        return torch.zeros(0, 3, size or 0, size or 0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InvkitError(f"images in {str(root)!r} have different sizes "
                          f"({', '.join(sorted(f'{s[1]}x{s[0]}' for s in shapes))}): the "
                          "images of one directory must share one size; resize them first")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(targets, dtype=torch.int64)


def load_shards(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and targets of every ``*.safetensors`` shard in ``directory`` (sorted by name)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    images, targets = [], []
    for shard in sorted(Path(directory).glob("*.safetensors")):
        try:
            tensors = load_file(str(shard))
        except (SafetensorError, OSError) as error:
            raise InvkitError(f"cannot read shard {str(shard)!r}: {error}") from None
        if "images" not in tensors or "targets" not in tensors:
            raise InvkitError(f"shard {str(shard)!r} lacks the 'images' and 'targets' tensors "
                              f"(has: {', '.join(sorted(tensors)) or 'none'})")
        shard_images, shard_targets = tensors["images"], tensors["targets"]
        if shard_images.dtype != torch.uint8 or shard_images.ndim != 4 or shard_images.shape[1] != 3:
            raise InvkitError(f"shard {str(shard)!r}: 'images' must be uint8 (N, 3, H, W), "
                              f"got {shard_images.dtype} {tuple(shard_images.shape)}")
        if shard_targets.shape != (shard_images.shape[0],):
            raise InvkitError(f"shard {str(shard)!r}: 'targets' must have shape "
                              f"({shard_images.shape[0]},), got {tuple(shard_targets.shape)}")
        images.append(shard_images)
        targets.append(shard_targets.to(torch.int64))
    return torch.cat(images), torch.cat(targets)


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                              antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def load_image_dataset(dirs: Sequence[Path | str], size: int | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``dirs`` combined: (uint8 (N, 3, H, W), int64 targets (N,)).

    Each directory may be an ImageFolder, a generated run directory (``images/`` or
    ``shards/``) or a directory of shards. ``size`` resizes every image to size x size
    (needed only when the directories hold different resolutions).

    Example:
        >>> images, targets = load_image_dataset(["run_png", "run_shards"])
    """
    if not dirs:
        raise InvkitError("no data directory given (pass at least one --data DIR)")
    images, targets = [], []
    for directory in dirs:
        layout, path = find_layout(Path(directory))
        loaded = load_shards(path) if layout == "shards" else load_imagefolder(path, size)
        if loaded[0].shape[0] == 0:
            raise InvkitError(f"data directory {str(directory)!r} holds no images")
        images.append(_resize_uint8(loaded[0], size) if size else loaded[0])
        targets.append(loaded[1])
    shapes = {tuple(i.shape[1:]) for i in images}
    if len(shapes) > 1:
        raise InvkitError("the data directories hold images of different sizes "
                          f"({', '.join(sorted('x'.join(map(str, s[1:])) for s in shapes))}): "
                          "combine only directories of one image size, or resize them first")
    return torch.cat(images), torch.cat(targets)


def dataset_class_names(dirs: Sequence[Path | str]) -> dict[int, str]:
    """Class names read from ImageFolder directory names (``"007_cat"`` -> ``{7: "cat"}``)."""
    names: dict[int, str] = {}
    for directory in dirs:
        layout, path = find_layout(Path(directory))
        if layout == "imagefolder":
            names.update({c.index: c.name for c in class_folders(path) if c.name})
    return names


def load_test_data(spec: str | Path, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images to test a student on: ``"digits"`` (the held-out digits split) or a directory.

    Images come back as uint8 from a directory, or float in [0, 1] for ``digits``;
    :func:`to_float01` accepts both.

    Example:
        >>> images, targets = load_test_data("digits")
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
    "ClassFolder", "find_layout", "class_folders", "load_imagefolder", "load_shards",
    "load_image_dataset", "dataset_class_names", "load_test_data", "to_float01",
]
