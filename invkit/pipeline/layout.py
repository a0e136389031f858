"""Where every file of a run goes, and the writers that put them there (all atomic).

::

    images/<class_dirname>/<batch:05d>_<i:03d>.png   (png: ImageFolder layout)
    shards/shard_XXXXX.safetensors                    (safetensors: "images" uint8 (N,3,H,W),
                                                       "targets" int64 (N,))
    manifest.jsonl   one line per image, sorted by (batch, index)
    grid.png         the first batch (at least the first 100 images)
    run.json         the run record, versions, per-batch stats, aggregates
    state/           resume state (see :mod:`invkit.pipeline.state`)

Example:
    >>> from invkit.pipeline.plan import plan_batches
    >>> plan = plan_batches(num_classes=10, batch_size=4, images_per_class=1)
    >>> layout = Layout(Path("out"), plan, fmt="png", shard_size=1024, num_classes=10,
    ...                 class_names=None)
    >>> layout.image_file(plan[0], 0)
    'images/000/00000_000.png'
    >>> layout.image_file(plan[1], 0)
    'images/004/00001_000.png'
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invkit.output import (
    atomic_write_bytes, class_dirname, png_bytes, save_grid, to_jsonable, to_uint8, write_json,
)
from invkit.pipeline.plan import Batch

FORMATS = ("png", "safetensors")
STATE_DIR = "state"
GRID_MIN_IMAGES = 100


@dataclass(frozen=True)
class GeneratedBatch:
    """What a method's ``generate(batch)`` returns for :func:`generate_dataset`.

    ``images01``: ``(N, 3, H, W)`` float in [0, 1] at the teacher's resolution;
    ``targets``, ``teacher_pred``, ``teacher_conf``: ``(N,)``; ``verifier_pred``:
    ``(N,)`` or ``None``; ``losses``: final loss terms as floats; ``stats``: anything
    else for run.json (stage timings, it/s...).

    Example:
        >>> import torch
        >>> targets = torch.tensor([0, 1, 2])
        >>> images01, conf = torch.rand(3, 3, 32, 32), torch.ones(3)
        >>> batch = GeneratedBatch(images01, targets, targets, conf, None,
        ...                        losses={"total": 0.8}, stats={"it_per_s": 31.0})
        >>> batch.losses
        {'total': 0.8}
    """

    images01: Any
    targets: Any
    teacher_pred: Any
    teacher_conf: Any
    verifier_pred: Any = None
    losses: dict[str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)



class Layout:
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



def write_batch(layout: Layout, batch: Batch, result: GeneratedBatch, *, seconds: float,
                rank: int, session: str) -> None:
    """Write one batch's images, then (last, atomically) its completion record."""
    import torch

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


def pack_shard(layout: Layout, k: int) -> None:
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
                                                "num_classes": layout.num_classes,
                                                "class_names": layout.class_names})})
    atomic_write_bytes(path, data)


def finish(layout: Layout, config: dict, *, info: dict | None = None, session: str,
           world_size: int, wall: float, resumed: bool) -> dict:
    """Rank 0: merge the records into manifest.jsonl, write grid.png and run.json.

    ``config`` is what defines the dataset (compared on resume), ``info`` how this
    session ran (device, output...); both go into run.json.
    """
    records = [json.loads(layout.record(b.index).read_text()) for b in layout.batches]
    rows = [row for record in records for row in record["rows"]]
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    atomic_write_bytes(layout.out / "manifest.jsonl", lines.encode("utf-8"))
    save_grid(layout.out / "grid.png", _grid_images(layout, grid_rows(rows, _grid_size(layout))))
    summary = _summary(layout, config, records, session=session, world_size=world_size, wall=wall,
                       resumed=resumed)
    summary["info"] = to_jsonable(info or {})
    write_json(layout.out / "run.json", summary)
    if layout.fmt == "safetensors":
        # Every shard exists now; the per-batch copies are redundant.
        for batch in layout.batches:
            layout.pending(batch.index).unlink(missing_ok=True)
    return summary


def _grid_size(layout: Layout) -> int:
    return min(layout.total_images, max(len(layout.batches[0].targets), GRID_MIN_IMAGES))


def grid_rows(rows: Sequence[dict], count: int) -> list[dict]:
    """A class-balanced sample of ``count`` manifest rows: each class's first image, then
    each class's second, ... (in class order), so grid.png shows every class.

    Example:
        >>> rows = [{"target": t} for t in (0, 0, 0, 1, 2)]
        >>> [r["target"] for r in grid_rows(rows, 4)]
        [0, 1, 2, 0]
    """
    seen: dict[int, int] = {}
    ranked = []
    for position, row in enumerate(rows):
        rank = seen.get(row["target"], 0)
        seen[row["target"]] = rank + 1
        ranked.append((rank, row["target"], position))
    return [rows[position] for _, _, position in sorted(ranked)[:count]]


def _grid_images(layout: Layout, rows: list[dict]):
    import torch

    if layout.fmt == "png":
        import numpy as np
        from PIL import Image

        images = []
        for row in rows:
            with Image.open(layout.out / row["file"]) as image:
                images.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
        return torch.stack(images)
    from safetensors import safe_open

    images = []
    for row in rows:
        with safe_open(layout.out / row["file"], framework="pt") as shard:
            images.append(shard.get_slice("images")[row["shard_index"]:row["shard_index"] + 1])
    return torch.cat(images)


def _summary(layout: Layout, config: dict, records: list[dict], *, session: str, world_size: int,
             wall: float, resumed: bool) -> dict:
    n = layout.total_images
    rows = [row for record in records for row in record["rows"]]
    verified = [r for r in rows if r["verifier_pred"] is not None]
    here = [r for r in records if r["session"] == session]
    images_here = sum(r["images"] for r in here)
    return {
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
        "losses": _mean_numbers(r["losses"] for r in records),
        # Per-batch stats averaged (each batch's own are under "batches").
        "stats": _mean_numbers(r["stats"] for r in records),
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


def _mean_numbers(dicts) -> dict[str, float]:
    """The mean of every numeric value, by key, over ``dicts`` (non-numbers left out)."""
    values: dict[str, list[float]] = {}
    for d in dicts:
        for key, value in d.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, []).append(value)
    return {key: sum(v) / len(v) for key, v in sorted(values.items())}


def _versions() -> dict:
    import platform

    import torch
    import torchvision

    import invkit

    return {"invkit": invkit.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}

