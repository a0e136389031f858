"""Run directories and the files in them, always written atomically.

Every writer here goes through :func:`atomic_write_bytes` (a temporary file in the
same directory, then ``os.replace``), so a run killed at any moment leaves each
file either complete or absent, never half-written. That is what lets
``--resume`` trust whatever it finds.

Example:
    >>> import torch
    >>> images01 = torch.rand(10, 3, 32, 32)
    >>> out = prepare_output_dir("generations/example")
    >>> save_png(out / "images" / class_dirname(7, 10, "seven") / "00000_000.png", images01[0])
    PosixPath('generations/example/images/007_seven/00000_000.png')
    >>> save_grid(out / "grid.png", images01)
    PosixPath('generations/example/grid.png')
    >>> write_json(out / "run.json", {"config": {"seed": 0}})
    PosixPath('generations/example/run.json')
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from invkit.errors import InvkitError
from invkit.lock import LOCK_NAME

#: What a run writes into its output directory; ``--overwrite`` removes exactly these
#: (never anything else a user may keep there).
RUN_ENTRIES = ("images", "shards", "progress", "state", "manifest.jsonl", "grid.png", "run.json",
               "losses.csv", "losses.png", "tensorboard", "generator.safetensors")
#: The file that marks a directory as an invkit run (written first by every run).
RUN_STATE = "state/run.json"
#: Everything invkit itself may leave in a run directory: the run, ``invkit eval``'s
#: report on it, and the output-directory lock (:mod:`invkit.lock`).
OWN_ENTRIES = frozenset(RUN_ENTRIES + ("eval.json", LOCK_NAME))
#: Temporary files of atomic writes a killed process can leave (``.run.json.x1y2.tmp``).
_RUN_TEMP = re.compile(r"^\.(?:(?:"
                       + "|".join(re.escape(n) for n in sorted(OWN_ENTRIES) if "." in n)
                       + r")\..+\.tmp|invkit-write-test\..+)$")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent directories.

    The bytes go to a temporary file beside ``path`` which then replaces it, so
    readers (and a resumed run) never see a partial file.

    Example:
        >>> atomic_write_bytes("out/notes.txt", b"hello")
        PosixPath('out/notes.txt')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # mkstemp makes owner-only files; give the final file the usual umask-based mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: leave no temporary file behind.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)  # pragma: no mutate (any value: the old mask comes back, then is restored)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (atomically); non-JSON values become plain data.

    Tensors and numpy scalars become numbers or lists, paths and other objects strings.

    Example:
        >>> import torch
        >>> write_json("out/run.json", {"seed": 0, "loss": torch.tensor(0.5)})
        PosixPath('out/run.json')
        >>> print(open("out/run.json").read())
        {
          "seed": 0,
          "loss": 0.5
        }
        <BLANKLINE>
    """
    text = json.dumps(to_jsonable(obj), indent=2)  # keys in insertion order
    return atomic_write_bytes(path, (text + "\n").encode())  # UTF-8


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON data: dicts, lists, str, int, float, bool, None.

    Example:
        >>> import torch
        >>> to_jsonable({"a": (1, 2), "t": torch.tensor([1.5])})
        {'a': [1, 2], 't': [1.5]}
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        # NaN/inf are not JSON; keep them readable instead of failing the whole run.
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def to_uint8(images01):
    """Images in [0, 1] (float, ``(..., C, H, W)``) as uint8 on the CPU, rounded half up.

    The same rounding as ``torchvision.utils.save_image``, so a PNG written here and
    one written by torchvision hold the same bytes.

    Example:
        >>> import torch
        >>> to_uint8(torch.full((3, 2, 2), 0.5)).unique()
        tensor([128], dtype=torch.uint8)
    """
    import torch

    if images01.dtype == torch.uint8:
        return images01.detach().cpu()
    return images01.detach().float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).cpu()


def png_bytes(image01) -> bytes:
    """Encode one image (``(C, H, W)``, C = 1 or 3, float in [0, 1] or uint8) as PNG bytes.

    Example:
        >>> import torch
        >>> png_bytes(torch.rand(3, 32, 32))[:4]
        b'\\x89PNG'
    """
    from PIL import Image

    if image01.dim() != 3 or image01.shape[0] not in (1, 3):
        raise ValueError(f"expected an image shaped (1 or 3, H, W), got {tuple(image01.shape)}")
    array = to_uint8(image01).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: str | os.PathLike, image01) -> Path:
    """Save one image (``(3, H, W)`` in [0, 1]) as a PNG file, atomically.

    Example:
        >>> import torch
        >>> save_png("out/images/007_seven/00000_000.png", torch.rand(3, 32, 32))
        PosixPath('out/images/007_seven/00000_000.png')
    """
    return atomic_write_bytes(path, png_bytes(image01))


def save_grid(path: str | os.PathLike, images01, nrow: int | None = None, padding: int = 2) -> Path:
    """Save a batch (``(N, 3, H, W)`` in [0, 1]) as one grid PNG, atomically.

    ``nrow`` is the number of images per row (default: a near-square grid).

    Example:
        >>> import torch
        >>> save_grid("out/grid.png", torch.rand(84, 3, 32, 32))   # a 10 x 9 grid
        PosixPath('out/grid.png')
    """
    from torchvision.utils import make_grid

    if images01.dim() != 4 or images01.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch shaped (N, C, H, W), got {tuple(images01.shape)}")
    n = images01.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    images = images01.detach().cpu()
    images = images.float() if images.is_floating_point() else images.float() / 255
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    return save_png(path, grid)


def class_dirname(index: int, num_classes: int, class_name: str | None = None) -> str:
    """The ImageFolder directory name of a class: zero-padded index, then the sanitised name.

    The index is padded to at least 3 digits (more when there are over 1000 classes)
    so that sorting the names sorts the classes.

    Example:
        >>> class_dirname(7, 10, "cat")
        '007_cat'
        >>> class_dirname(42, 1000, "tench, Tinca tinca")
        '042_tench_Tinca_tinca'
        >>> class_dirname(42, 20000, None)
        '00042'
    """
    width = max(3, len(str(max(num_classes - 1, 0))))
    prefix = f"{index:0{width}d}"
    name = _sanitise(class_name) if class_name else ""
    return f"{prefix}_{name}" if name else prefix


def _sanitise(name: str, limit: int = 60) -> str:
    # Portable file names: letters, digits, '-', '.', '_' only, no leading dots.
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip())
    cleaned = re.sub(r"_+", "_", cleaned).strip("._")
    return cleaned[:limit].rstrip("._")


def is_invkit_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an invkit run: its resume state ``state/run.json`` is there.

    Only such a directory may be overwritten or resumed. The state file is written
    first thing by every run (before any image), as a JSON object with a ``plan``.

    Example:
        >>> _ = write_json("generations/digits/state/run.json", {"plan": "..."})
        >>> is_invkit_run("generations/digits"), is_invkit_run("Pictures")
        (True, False)
    """
    state = Path(path) / RUN_STATE
    try:
        data = json.loads(state.read_bytes())  # bytes: JSON is UTF-8 whatever the locale
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "plan" in data


def foreign_entries(path: str | os.PathLike) -> list[str]:
    """The names in ``path`` that no invkit run writes (sorted): what ``--overwrite`` keeps.

    Example:
        >>> _ = write_json("generations/digits/state/run.json", {"plan": "..."})
        >>> _ = atomic_write_bytes("generations/digits/notes.txt", b"mine")
        >>> foreign_entries("generations/digits")
        ['notes.txt']
    """
    return sorted(entry.name for entry in Path(path).iterdir()
                  if entry.name not in OWN_ENTRIES and not _RUN_TEMP.match(entry.name))


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run directory, refusing to mix a new run into anything else.

    - An empty path (``--output ''``) is refused; so is a path that is a file.
    - A missing or empty directory is used as it is (also with ``resume``: nothing to
      continue, so the run starts).
    - A non-empty directory is refused unless it holds an invkit run
      (:func:`is_invkit_run`) and ``resume`` (continue it) or ``overwrite`` is given.
    - ``overwrite`` deletes only what a run writes (:data:`RUN_ENTRIES`, ``eval.json``
      and leftover temporary files of atomic writes), and only when nothing else is
      there: a directory holding other files is refused, naming some of them.
    - A location that cannot be created or written is a one-line error.

    The output-directory lock file (:mod:`invkit.lock`) does not count as content.

    Example:
        >>> prepare_output_dir("generations/test")                  # new, or empty
        PosixPath('generations/test')
        >>> _ = write_json("generations/test/state/run.json", {"plan": "..."})
        >>> prepare_output_dir("generations/test", overwrite=True)  # replace an earlier run
        PosixPath('generations/test')
        >>> _ = atomic_write_bytes("generations/notes.txt", b"mine")
        >>> prepare_output_dir("generations/notes.txt")
        Traceback (most recent call last):
        invkit.errors.InvkitError: output path 'generations/notes.txt' exists and is not a directory
    """
    if not str(path).strip():
        raise InvkitError("the output path is empty: pass --output DIR")
    path = Path(path)
    if overwrite and resume:
        raise InvkitError("--overwrite and --resume cannot be used together: choose one")
    if path.exists() and not path.is_dir():
        raise InvkitError(f"output path {str(path)!r} exists and is not a directory")
    contents = _contents(path)
    if contents:
        if not is_invkit_run(path):
            raise InvkitError(
                f"output directory {str(path)!r} is not empty and holds no invkit run state "
                f"(no readable {RUN_STATE}; it holds {_some(contents)}); --resume and "
                "--overwrite apply only to a run's directory: choose another --output")
        if not (overwrite or resume):
            raise InvkitError(
                f"output directory {str(path)!r} is not empty; pass --resume to continue "
                "the run in it or --overwrite to replace it (or choose another --output: "
                f"{str(next_free_dir(path))!r} is free)")
        foreign = foreign_entries(path)
        if overwrite and foreign:
            raise InvkitError(
                f"refusing --overwrite: {str(path)!r} also holds files no invkit run wrote "
                f"({_some(foreign)}); move them away or choose another --output")
        if overwrite:
            _remove_run(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        check_writable(path)
    except OSError as error:
        raise InvkitError(f"cannot write to output directory {str(path)!r}: "
                          f"{error.strerror or error}") from None
    return path


def check_writable(directory: str | os.PathLike) -> None:
    """Raise ``OSError`` unless a file can be created in ``directory`` (read-only disks too).

    Example:
        >>> check_writable(".")
        >>> check_writable("no/such/directory")
        Traceback (most recent call last):
        FileNotFoundError: [Errno 2] No such file or directory: '.../no/such/directory/...'
    """
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".invkit-write-test.")
    os.close(fd)
    os.unlink(probe)


def _contents(path: Path) -> list[str]:
    """The names in ``path`` except the lock file (empty for a missing directory)."""
    if not path.is_dir():
        return []  # missing (or under a file: mkdir reports that)
    try:
        return sorted(e.name for e in path.iterdir() if e.name != LOCK_NAME)
    except OSError as error:
        raise InvkitError(f"cannot read output directory {str(path)!r}: "
                          f"{error.strerror or error}") from None


def _some(names: list[str], show: int = 3) -> str:
    more = f" and {len(names) - show} more" if len(names) > show else ""
    return ", ".join(names[:show]) + more


def _remove_run(path: Path) -> None:
    """Delete an earlier run's entries (:func:`foreign_entries` already found nothing else)."""
    try:
        for entry in sorted(path.iterdir()):
            if entry.name not in OWN_ENTRIES and not _RUN_TEMP.match(entry.name):
                continue
            if entry.name == LOCK_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        raise InvkitError(f"cannot remove the earlier run in {str(path)!r}: "
                          f"{error.strerror or error}{where}") from None


def next_free_dir(path: str | os.PathLike) -> Path:
    """``path`` if it is free (missing, or an empty directory), else the first free
    ``<path>-2``, ``<path>-3``, ... beside it (what to suggest when ``path`` is taken).

    Nothing is created; the number is only a suggestion, so two runs started at the
    same moment may be offered the same directory (the refusal still protects them).

    Example:
        >>> next_free_dir("generations/cifar")       # missing: free
        PosixPath('generations/cifar')
        >>> _ = write_json("generations/cifar/state/run.json", {"plan": "..."})
        >>> next_free_dir("generations/cifar")       # generations/cifar holds a run
        PosixPath('generations/cifar-2')
    """
    path = Path(path)
    if not path.name:  # ".", "/" or "dir/..": number the directory itself
        path = path.resolve()
    if _is_free(path):
        return path
    n = 2
    while not _is_free(path.with_name(f"{path.name}-{n}")):
        n += 1
    return path.with_name(f"{path.name}-{n}")


def _is_free(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        return not any(path.iterdir())
    return not path.exists() and not path.is_symlink()
