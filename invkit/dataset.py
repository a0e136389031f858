"""Dataset-scale generation: a class-balanced plan of batches, written resumably, on any number of ranks.

Two pieces, independent of the inversion method:

* :func:`plan_batches` turns "N batches" or "K images per class" into a list of
  :class:`Batch` (targets + seed). Each batch's seed is a hash of (run seed, batch
  index) only, so the dataset does not depend on how many processes made it and
  any batch can be regenerated alone: ``method.generate(batch.targets, seed=batch.seed)``.
* :func:`generate_dataset` calls a method's ``generate(batch) -> GeneratedBatch`` for
  every batch not done yet and writes the output directory::

      images/<class_dirname>/<batch:05d>_<i:03d>.png   (fmt="png", ImageFolder layout)
      shards/shard_XXXXX.safetensors                    (fmt="safetensors": "images" uint8
                                                         (N,3,H,W), "targets" int64 (N,))
      manifest.jsonl   one line per image, sorted by (batch, index)
      grid.png         the first batch (at least the first 100 images)
      run.json         config, versions, per-batch stats, aggregates
      state/           resume state: run.json (the settings) and one record per
                       completed batch (batches/NNNNN.json, written atomically
                       after all of the batch's images)

Resume: a batch is complete exactly when its record exists. ``resume=True``
skips complete batches, redoes the others (a batch cut off mid-way rewrites its
own partial files, never another batch's), and refuses a different
configuration, naming the settings that differ (keys in
:data:`RESUME_IGNORED_KEYS`, e.g. ``device``, may differ).

torchrun: each rank takes ``remaining[rank::world_size]`` on its own device and
writes its own images and records; ranks meet only at the start (rank 0 checks
the directory and tells the others which batches remain) and at the end (packing
shards, then rank 0 merges the manifest and writes ``grid.png`` and ``run.json``).
Multi-node runs need ``out_dir`` on a filesystem all nodes share.

Progress protocol: ``progress`` may be ``None`` or any object with (both optional)
``batch_start(batch: Batch, done: int, total: int)`` and
``batch_done(done: int, total: int)``; only rank 0 calls them, with the global
number of completed batches (counted from the records all ranks write).
``batch_done`` is also called once before the first batch with the count already
done (non-zero on resume).

SIGINT / SIGTERM: the first Ctrl-C finishes the current batch then stops; a second
Ctrl-C, or SIGTERM (what torchrun and schedulers send), abandons the current batch
at once (it is redone on resume). Either way every completed batch is on disk, a
line says how to resume, and :class:`RunInterrupted` is raised (exit code 130 for
SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invkit.distributed import barrier, broadcast_object, dist_env, init_distributed
from invkit.errors import InvkitError
from invkit.output import (
    RUN_ENTRIES, atomic_write_bytes, class_dirname, png_bytes, prepare_output_dir, save_grid,
    to_jsonable, to_uint8, write_json,
)

#: Config keys that may differ between a run and its resumption: they change how
#: or where a run executes, not which images it makes.
RESUME_IGNORED_KEYS = frozenset({
    "resume", "overwrite", "device", "output", "quiet", "verbose", "progress", "num_workers",
    "save_every",  # how often progress grids are saved: not what the dataset holds
})
FORMATS = ("png", "safetensors")
STATE_DIR = "state"
GRID_MIN_IMAGES = 100
_STATE_VERSION = 1


@dataclass(frozen=True)
class Batch:
    """One batch of the plan: its position, the class of each image, its seed.

    Example:
        >>> Batch(index=0, targets=(0, 1, 2), seed=123)
    """

    index: int
    targets: tuple[int, ...]
    seed: int


@dataclass(frozen=True)
class GeneratedBatch:
    """What a method's ``generate(batch)`` returns for :func:`generate_dataset`.

    ``images01``: ``(N, 3, H, W)`` float in [0, 1] at the teacher's resolution;
    ``targets``, ``teacher_pred``, ``teacher_conf``: ``(N,)``; ``verifier_pred``:
    ``(N,)`` or ``None``; ``losses``: final loss terms as floats; ``stats``: anything
    else for run.json (stage timings, it/s...).

    Example:
        >>> GeneratedBatch(images01, torch.tensor(batch.targets), pred, conf, None,
        ...                losses={"total": 0.8}, stats={"it_per_s": 31.0})
    """

    images01: Any
    targets: Any
    teacher_pred: Any
    teacher_conf: Any
    verifier_pred: Any = None
    losses: dict[str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


class RunInterrupted(InvkitError):
    """A run stopped by SIGINT/SIGTERM; completed batches are saved and ``--resume`` continues.

    ``exit_code`` is 128 + the signal number (130 for Ctrl-C), as shells expect.
    """

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


# --------------------------------------------------------------------------- the plan


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a run seeded ``seed``: a hash of the two, nothing else.

    Example:
        >>> batch_seed(0, 3) == batch_seed(0, 3) != batch_seed(1, 3)
        True
    """
    digest = hashlib.blake2b(f"invkit-batch:{int(seed)}:{int(index)}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") & (2**63 - 1)  # fits torch.manual_seed


def plan_batches(*, num_classes: int, batch_size: int, targets: Sequence[int] | None = None,
                 num_batches: int | None = None, images_per_class: int | None = None,
                 random_labels: bool = False, seed: int = 0) -> list[Batch]:
    """A class-balanced list of batches.

    Labels cycle through ``targets`` (default: every class), so over the run each
    class gets its share: exactly ``images_per_class`` each (the last batch may be
    smaller), or, with ``num_batches``, counts differing by at most one. With
    ``random_labels`` the same balanced labels are shuffled across the run (seeded
    by ``seed``). Default: one batch.

    Example:
        >>> [b.targets for b in plan_batches(num_classes=3, batch_size=2, images_per_class=2)]
        [(0, 1), (2, 0), (1, 2)]
    """
    if num_classes < 1:
        raise InvkitError(f"num_classes must be at least 1, got {num_classes}")
    if batch_size < 1:
        raise InvkitError(f"batch size must be at least 1, got {batch_size}")
    if num_batches is not None and images_per_class is not None:
        raise InvkitError("give --num-batches or --images-per-class, not both")
    if num_batches is not None and num_batches < 1:
        raise InvkitError(f"--num-batches must be at least 1, got {num_batches}")
    if images_per_class is not None and images_per_class < 1:
        raise InvkitError(f"--images-per-class must be at least 1, got {images_per_class}")
    pool = list(range(num_classes)) if targets is None else [int(t) for t in targets]
    if not pool:
        raise InvkitError("targets must name at least one class")
    bad = [t for t in pool if not 0 <= t < num_classes]
    if bad:
        raise InvkitError(f"target {bad[0]} is out of range: classes are 0..{num_classes - 1}")

    if images_per_class is not None:
        total = images_per_class * len(pool)
    else:
        total = (num_batches or 1) * batch_size
    labels = [pool[i % len(pool)] for i in range(total)]
    if random_labels:
        random.Random(f"invkit-labels:{int(seed)}").shuffle(labels)
    return [
        Batch(index=b, targets=tuple(labels[start:start + batch_size]), seed=batch_seed(seed, b))
        for b, start in enumerate(range(0, total, batch_size))
    ]


def plan_fingerprint(batches: Sequence[Batch]) -> str:
    """A short hash of the plan (indices, targets, seeds), stored to detect a changed plan."""
    text = json.dumps([[b.index, list(b.targets), b.seed] for b in batches])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- layout


class _Layout:
    """Where every file of a run goes, computed from the plan alone (so every rank agrees)."""

    def __init__(self, out_dir: Path, batches: Sequence[Batch], fmt: str, shard_size: int,
                 num_classes: int, class_names: Sequence[str] | None):
        self.out = out_dir
        self.fmt = fmt
        self.shard_size = shard_size
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None
        self.batches = sorted(batches, key=lambda b: b.index)
        self.offsets: dict[int, int] = {}
        position = 0
        for batch in self.batches:
            self.offsets[batch.index] = position
            position += len(batch.targets)
        self.total_images = position
        self.num_shards = math.ceil(position / shard_size) if fmt == "safetensors" else 0

    @property
    def state(self) -> Path:
        return self.out / STATE_DIR

    def record(self, index: int) -> Path:
        return self.state / "batches" / f"{index:05d}.json"

    def pending(self, index: int) -> Path:
        # A batch's images before they are packed into shards (fmt="safetensors").
        return self.state / "batches" / f"{index:05d}.safetensors"

    def shard(self, k: int) -> Path:
        return self.out / "shards" / f"shard_{k:05d}.safetensors"

    def class_name(self, target: int) -> str | None:
        if self.class_names and 0 <= target < len(self.class_names):
            return self.class_names[target]
        return None

    def image_file(self, batch: Batch, i: int) -> str:
        target = batch.targets[i]
        folder = class_dirname(target, self.num_classes, self.class_name(target))
        return f"images/{folder}/{batch.index:05d}_{i:03d}.png"

    def shard_place(self, batch: Batch, i: int) -> tuple[int, int]:
        position = self.offsets[batch.index] + i
        return divmod(position, self.shard_size)


# --------------------------------------------------------------------------- the writer


def generate_dataset(batches: Sequence[Batch], generate: Callable[[Batch], GeneratedBatch],
                     out_dir: str | os.PathLike, *, config: dict, num_classes: int,
                     class_names: Sequence[str] | None, fmt: str = "png", shard_size: int = 1024,
                     resume: bool = False, overwrite: bool = False, progress=None) -> dict:
    """Generate every batch of the plan not done yet and write the dataset (see module doc).

    Returns the summary written into ``run.json`` (on every rank). Raises
    :class:`RunInterrupted` on SIGINT/SIGTERM after saving the completed batches.

    Under torchrun, a program should end with
    :func:`invkit.distributed.shutdown_distributed` after this returns (as
    ``invkit run`` does), so that gloo's threads cannot abort a finished worker.

    Example:
        >>> plan = plan_batches(num_classes=10, batch_size=84, images_per_class=100, seed=0)
        >>> summary = generate_dataset(plan, method_generate, Path("generations/digits"),
        ...                            config=config, num_classes=10, class_names=names)
        >>> summary["num_images"], summary["teacher_accuracy"]
        (1000, 0.99)
    """
    if fmt not in FORMATS:
        raise InvkitError(f"unknown format {fmt!r} (valid: {', '.join(FORMATS)})")
    if shard_size < 1:
        raise InvkitError(f"--shard-size must be at least 1, got {shard_size}")
    if not batches:
        raise InvkitError("the batch plan is empty: nothing to generate")
    indices = [b.index for b in batches]
    if len(set(indices)) != len(indices):
        raise ValueError("batch indices must be unique")

    out_dir = Path(out_dir)
    env = init_distributed()  # gloo unless the caller already made a (e.g. nccl) group
    layout = _Layout(out_dir, batches, fmt, shard_size, num_classes, class_names)
    settings = _settings(config, layout, batches)
    stop = _StopSignal()

    with stop.installed():
        try:
            summary = _generate(layout, generate, settings, env, stop, config=config, resume=resume,
                                overwrite=overwrite, progress=progress)
        except (_Abandon, KeyboardInterrupt) as stopped:
            signum = stopped.signum if isinstance(stopped, _Abandon) else signal.SIGINT
            raise _interrupted(layout, signum) from None
    return summary


def _generate(layout: _Layout, generate, settings: dict, env, stop: "_StopSignal", *, config: dict,
              resume: bool, overwrite: bool, progress) -> dict:
    total = len(layout.batches)
    # Start: rank 0 alone touches the directory, then tells every rank what remains.
    verdict = None
    if env.is_main:
        try:
            done = _start(layout, settings, resume=resume, overwrite=overwrite)
            verdict = {"done": sorted(done), "session": uuid.uuid4().hex[:12]}
        except InvkitError as error:
            verdict = {"error": str(error)}
    verdict = broadcast_object(verdict)
    if "error" in verdict:
        raise InvkitError(verdict["error"])
    done = set(verdict["done"])
    session = verdict["session"]
    remaining = [b for b in layout.batches if b.index not in done]
    mine = remaining[env.rank::env.world_size]

    started = time.perf_counter()
    if env.is_main:
        _call(progress, "batch_done", len(done), total)
    finished_here = 0
    for batch in mine:
        if stop.requested:
            break
        if env.is_main:
            _call(progress, "batch_start", batch, _count_done(layout, done, finished_here, env), total)
        _run_batch(layout, batch, generate, rank=env.rank, session=session)
        finished_here += 1
        if env.is_main:
            _call(progress, "batch_done", _count_done(layout, done, finished_here, env), total)
    if stop.requested:
        raise _Abandon(stop.signum)
    # End: every rank's share is on disk; pack shards (spread over ranks), then merge.
    barrier()
    if layout.fmt == "safetensors":
        for k in range(env.rank, layout.num_shards, env.world_size):
            _pack_shard(layout, k)
        barrier()
    summary = None
    if env.is_main:
        summary = _finish(layout, config, session=session, world_size=env.world_size,
                          wall=time.perf_counter() - started, resumed=bool(done))
    return broadcast_object(summary)


def _call(progress, method: str, *args) -> None:
    hook = getattr(progress, method, None) if progress is not None else None
    if hook is not None:
        hook(*args)


def _count_done(layout: _Layout, done_before: set, finished_here: int, env) -> int:
    if not env.distributed:
        return len(done_before) + finished_here
    # Other ranks' progress, read from the records they write (no waiting on them).
    folder = layout.state / "batches"
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.name.endswith(".json"))


def _settings(config: dict, layout: _Layout, batches: Sequence[Batch]) -> dict:
    return {
        "version": _STATE_VERSION,
        "config": to_jsonable(config),
        "format": layout.fmt,
        "shard_size": layout.shard_size if layout.fmt == "safetensors" else None,
        "num_classes": layout.num_classes,
        "num_batches": len(batches),
        "num_images": layout.total_images,
        "plan": plan_fingerprint(layout.batches),
    }


def _start(layout: _Layout, settings: dict, *, resume: bool, overwrite: bool) -> set[int]:
    """Prepare the directory (rank 0 only); return the indices of batches already complete."""
    out = prepare_output_dir(layout.out, overwrite=overwrite, resume=resume)
    state_file = layout.state / "run.json"
    if resume and state_file.exists():
        previous = json.loads(state_file.read_text())
        differences = _differences(previous, settings)
        if differences:
            raise InvkitError(
                f"cannot resume the run in {str(out)!r}: its settings differ from this command's: "
                + "; ".join(differences)
                + " (rerun with the original settings, or use --overwrite to start again)"
            )
    elif resume and any((out / name).exists() for name in RUN_ENTRIES):
        raise InvkitError(
            f"cannot resume in {str(out)!r}: it holds no invkit run state ({STATE_DIR}/run.json); "
            "use --overwrite to start again"
        )
    else:
        write_json(state_file, settings)
    (layout.state / "batches").mkdir(parents=True, exist_ok=True)
    wanted = {b.index for b in layout.batches}
    return {index for index in wanted if layout.record(index).exists()}


def _differences(previous: dict, current: dict) -> list[str]:
    """``key (old -> new)`` for every setting that differs, nested config keys dotted."""
    def flat(settings: dict) -> dict:
        items = {k: v for k, v in settings.items() if k != "config"}
        items.update(_flatten(settings.get("config") or {}, ""))
        return items

    old, new = flat(previous), flat(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] in RESUME_IGNORED_KEYS or key == "version":
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            name = "batch plan" if key == "plan" else key
            lines.append(f"{name} ({_short(old.get(key, '<unset>'))} -> {_short(new.get(key, '<unset>'))})")
    return lines


def _flatten(config: dict, prefix: str) -> dict:
    items = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.update(_flatten(value, name + "."))
        else:
            items[name] = value
    return items


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _run_batch(layout: _Layout, batch: Batch, generate, *, rank: int, session: str) -> None:
    """Generate one batch, write its images, then (last, atomically) its completion record."""
    import torch

    t0 = time.perf_counter()
    result = generate(batch)
    seconds = time.perf_counter() - t0
    images = to_uint8(result.images01)
    n = len(batch.targets)
    if images.dim() != 4 or images.shape[0] != n:
        raise ValueError(f"generate() returned images shaped {tuple(images.shape)} for a batch of {n}")
    targets = torch.as_tensor(result.targets).cpu().long().view(-1)
    if targets.tolist() != list(batch.targets):
        raise ValueError(f"generate() returned targets {targets.tolist()} for batch {batch.index}"
                         f" planned with {list(batch.targets)}")
    teacher_pred = torch.as_tensor(result.teacher_pred).cpu().view(-1).tolist()
    teacher_conf = torch.as_tensor(result.teacher_conf).cpu().float().view(-1).tolist()
    verifier_pred = (None if result.verifier_pred is None
                     else torch.as_tensor(result.verifier_pred).cpu().view(-1).tolist())

    rows = []
    for i, target in enumerate(batch.targets):
        row = {"file": None, "target": target, "class_name": layout.class_name(target),
               "teacher_pred": int(teacher_pred[i]), "teacher_conf": round(float(teacher_conf[i]), 6),
               "verifier_pred": None if verifier_pred is None else int(verifier_pred[i]),
               "seed": batch.seed, "batch": batch.index, "index": i}
        if layout.fmt == "png":
            row["file"] = layout.image_file(batch, i)
            atomic_write_bytes(layout.out / row["file"], png_bytes(images[i]))
        else:
            shard, offset = layout.shard_place(batch, i)
            row["file"] = layout.shard(shard).relative_to(layout.out).as_posix()
            row["shard_index"] = offset
        rows.append(row)
    if layout.fmt == "safetensors":
        from safetensors.torch import save

        data = save({"images": images.contiguous(), "targets": targets.contiguous()})
        atomic_write_bytes(layout.pending(batch.index), data)

    correct = [r["teacher_pred"] == r["target"] for r in rows]
    record = {
        "index": batch.index, "seed": batch.seed, "targets": list(batch.targets), "rank": rank,
        "session": session, "images": n, "seconds": round(seconds, 4),
        "teacher_accuracy": sum(correct) / n,
        "verifier_accuracy": (None if verifier_pred is None
                              else sum(int(v) == t for v, t in zip(verifier_pred, batch.targets)) / n),
        "losses": to_jsonable(result.losses), "stats": to_jsonable(result.stats), "rows": rows,
    }
    # Written last: its existence is what marks the batch complete.
    write_json(layout.record(batch.index), record)


def _pack_shard(layout: _Layout, k: int) -> None:
    """Write shard ``k`` (global image positions ``k*S .. k*S+S-1``) from the batches' pending files."""
    import torch
    from safetensors.torch import load_file, save

    path = layout.shard(k)
    if path.exists():  # packed by an earlier session: shards are only packed once all batches are done
        return
    lo, hi = k * layout.shard_size, min((k + 1) * layout.shard_size, layout.total_images)
    images, targets = [], []
    for batch in layout.batches:
        start = layout.offsets[batch.index]
        end = start + len(batch.targets)
        if end <= lo or start >= hi:
            continue
        tensors = load_file(layout.pending(batch.index))
        a, b = max(lo, start) - start, min(hi, end) - start
        images.append(tensors["images"][a:b])
        targets.append(tensors["targets"][a:b])
    data = save({"images": torch.cat(images).contiguous(), "targets": torch.cat(targets).contiguous()},
                # One key: safetensors writes metadata keys in hash order, and the same
                # shard must have the same bytes whichever process wrote it.
                metadata={"invkit": json.dumps({"format": "invkit-shard-v1", "first_image": lo,
                                                "num_classes": layout.num_classes})})
    atomic_write_bytes(path, data)


def _finish(layout: _Layout, config: dict, *, session: str, world_size: int, wall: float,
            resumed: bool) -> dict:
    """Rank 0: merge the records into manifest.jsonl, write grid.png and run.json."""
    records = [json.loads(layout.record(b.index).read_text()) for b in layout.batches]
    rows = [row for record in records for row in record["rows"]]
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    atomic_write_bytes(layout.out / "manifest.jsonl", lines.encode("utf-8"))
    save_grid(layout.out / "grid.png", _grid_images(layout, rows))
    summary = _summary(layout, config, records, session=session, world_size=world_size, wall=wall,
                       resumed=resumed)
    write_json(layout.out / "run.json", summary)
    if layout.fmt == "safetensors":
        # Every shard exists now; the per-batch copies are redundant.
        for batch in layout.batches:
            layout.pending(batch.index).unlink(missing_ok=True)
    return summary


def _grid_images(layout: _Layout, rows: list[dict]):
    import torch

    first = len(layout.batches[0].targets)
    count = min(len(rows), max(first, GRID_MIN_IMAGES))
    if layout.fmt == "png":
        import numpy as np
        from PIL import Image

        images = []
        for row in rows[:count]:
            with Image.open(layout.out / row["file"]) as image:
                images.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
        return torch.stack(images)
    from safetensors.torch import load_file

    images, k = [], 0
    while sum(len(x) for x in images) < count:
        images.append(load_file(layout.shard(k))["images"])
        k += 1
    return torch.cat(images)[:count]


def _summary(layout: _Layout, config: dict, records: list[dict], *, session: str, world_size: int,
             wall: float, resumed: bool) -> dict:
    n = layout.total_images
    rows = [row for record in records for row in record["rows"]]
    verified = [r for r in rows if r["verifier_pred"] is not None]
    loss_names = sorted({name for record in records for name in record["losses"]})
    losses = {}
    for name in loss_names:
        values = [r["losses"][name] for r in records if isinstance(r["losses"].get(name), (int, float))]
        if values:
            losses[name] = sum(values) / len(values)
    here = [r for r in records if r["session"] == session]
    images_here = sum(r["images"] for r in here)
    summary = {
        "config": to_jsonable(config),
        "versions": _versions(),
        "format": layout.fmt,
        **({"shard_size": layout.shard_size, "num_shards": layout.num_shards}
           if layout.fmt == "safetensors" else {}),
        "num_classes": layout.num_classes,
        "num_batches": len(records),
        "num_images": n,
        "teacher_accuracy": sum(r["teacher_pred"] == r["target"] for r in rows) / n,
        "mean_teacher_conf": sum(r["teacher_conf"] for r in rows) / n,
        "verifier_accuracy": (sum(r["verifier_pred"] == r["target"] for r in verified) / len(verified)
                              if verified else None),
        "losses": losses,
        "generation_seconds": sum(r["seconds"] for r in records),
        "last_session": {
            "world_size": world_size, "resumed": resumed, "batches": len(here), "images": images_here,
            "wall_seconds": round(wall, 3),
            "images_per_s": round(images_here / wall, 4) if wall > 0 and images_here else None,
        },
        "batches": [{k: v for k, v in record.items() if k not in ("rows", "targets")}
                    for record in records],
        "complete": True,
    }
    if len(records) == 1:  # a single batch: its stats (stage timings, it/s...) at the top level too
        summary["stats"] = records[0]["stats"]
    return summary


def _versions() -> dict:
    import platform

    import torch
    import torchvision

    import invkit

    return {"invkit": invkit.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}


# --------------------------------------------------------------------------- signals


class _Abandon(BaseException):
    """Raised inside the batch loop to stop now (BaseException: no ``except Exception`` eats it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _StopSignal:
    """SIGINT: stop after the current batch (twice: now). SIGTERM: stop now."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        again = self.signum is not None
        self.signum = self.signum or signum
        if signum == signal.SIGTERM or again:
            raise _Abandon(self.signum)
        if dist_env().is_main:
            print("\nStopping after the current batch (Ctrl-C again to stop now; "
                  "the batch is then redone on --resume).", file=sys.stderr, flush=True)

    def installed(self):
        return _Handlers(self)


class _Handlers:
    def __init__(self, stop: _StopSignal):
        self.stop = stop
        self.previous: dict = {}

    def __enter__(self):
        # Signal handlers can only be set from the main thread; elsewhere Ctrl-C
        # arrives as KeyboardInterrupt, which is handled the same way.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.stop._handle)
        return self.stop

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


def _interrupted(layout: _Layout, signum: int) -> RunInterrupted:
    done = sum(1 for b in layout.batches if layout.record(b.index).exists())
    name = signal.Signals(signum).name
    return RunInterrupted(
        f"interrupted by {name}: {done} of {len(layout.batches)} batches are complete in "
        f"{str(layout.out)!r}; to continue, run the same command with --resume: {resume_command()}",
        signum,
    )


def resume_command(argv: Sequence[str] | None = None) -> str:
    """This process's command line with ``--resume`` added (and ``--overwrite`` removed).

    Example:
        >>> resume_command(["invkit", "run", "deepinversion", "--overwrite"])
        'invkit run deepinversion --resume'
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "<your command> --resume"
    env = dist_env()
    program = os.path.basename(argv[0])
    as_module = program in ("__main__.py", "-m", "-c") or program.startswith("python")
    args = [a for a in argv[1:] if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    if not env.distributed:
        words = ["python -m invkit" if as_module else program]
    else:
        # torchrun runs a script file (the console script's full path) or "-m invkit".
        local = os.environ.get("LOCAL_WORLD_SIZE", str(env.world_size))
        launcher = (f"torchrun --nproc-per-node {local}" if local == str(env.world_size)
                    else "torchrun <your torchrun options>")
        words = [launcher, "-m invkit" if as_module else shlex.quote(argv[0])]
    return " ".join([*words, *map(shlex.quote, args)])
