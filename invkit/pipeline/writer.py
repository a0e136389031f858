"""Dataset-scale generation: every batch of a plan, written resumably, on any number of ranks.

:func:`generate_dataset` calls ``generate(batch) -> GeneratedBatch`` for every batch not
done yet and writes the run directory (see :mod:`invkit.pipeline.layout`).

torchrun: each rank takes ``remaining[rank::world_size]`` on its own device and writes
its own images and records; ranks meet only at the start (rank 0 checks the directory and
tells the others which batches remain) and at the end (packing shards, then rank 0
merges the manifest and writes ``grid.png`` and ``run.json``). Multi-node runs need the
output directory on a filesystem all nodes share.

Progress protocol: ``progress`` may be ``None`` or any object with (both optional)
``batch_start(batch, done, total)`` and ``batch_done(done, total)``; only rank 0 calls
them, with the global number of completed batches (counted from the records all ranks
write). ``batch_done`` is also called once before the first batch with the count already
done (non-zero on resume).
"""

from __future__ import annotations

import math
import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from invkit.distributed import barrier, broadcast_object, init_distributed
from invkit.errors import InvkitError
from invkit.lock import OutputLock
from invkit.pipeline.layout import FORMATS, GeneratedBatch, Layout, finish, pack_shard, write_batch
from invkit.pipeline.plan import Batch
from invkit.pipeline.signals import Abandon, StopSignal, interrupted
from invkit.pipeline.state import settings_for, start


def generate_dataset(batches: Sequence[Batch], generate: Callable[[Batch], GeneratedBatch],
                     out_dir: str | os.PathLike, *, config: dict, num_classes: int,
                     class_names: Sequence[str] | None, fmt: str = "png", shard_size: int = 1024,
                     resume: bool = False, overwrite: bool = False, progress=None,
                     info: dict | None = None) -> dict:
    """Generate every batch of the plan not done yet and write the dataset.

    ``config`` defines the dataset (compared on ``resume``); ``info`` only describes how
    this session ran. Returns the summary written into ``run.json`` (on every rank).
    Raises :class:`~invkit.pipeline.signals.RunInterrupted` on SIGINT/SIGTERM after
    saving the completed batches, and :class:`InvkitError` when a batch's losses or
    images are not finite (the batch is not marked complete; ``--resume`` redoes it).

    Under torchrun, a program should end with
    :func:`invkit.distributed.shutdown_distributed` after this returns (as ``invkit run``
    does), so that gloo's threads cannot abort a finished worker.

    Example:
        >>> import torch
        >>> from pathlib import Path
        >>> from invkit.pipeline.layout import GeneratedBatch
        >>> from invkit.pipeline.plan import plan_batches
        >>> def generate_one(batch):              # a stand-in for a method's generator
        ...     targets = torch.tensor(batch.targets)
        ...     return GeneratedBatch(torch.rand(len(targets), 3, 8, 8), targets, targets,
        ...                           torch.ones(len(targets)), None, losses={"total": 0.5})
        >>> plan = plan_batches(num_classes=10, batch_size=4, images_per_class=1, seed=0)
        >>> summary = generate_dataset(plan, generate_one, Path("generations/fake"),
        ...                            config={"method": "fake"}, num_classes=10,
        ...                            class_names=None)
        >>> summary["num_images"]
        10
        >>> sorted(p.name for p in Path("generations/fake").iterdir())
        ['grid.png', 'images', 'manifest.jsonl', 'run.json', 'state']
    """
    if fmt not in FORMATS:
        raise InvkitError(f"unknown format {fmt!r} (valid: {', '.join(FORMATS)})")
    if shard_size < 1:
        raise InvkitError(f"shard size must be at least 1, got {shard_size}")
    if not batches:
        raise InvkitError("the batch plan is empty: nothing to generate")
    indices = [b.index for b in batches]
    if len(set(indices)) != len(indices):
        raise ValueError("batch indices must be unique")

    env = init_distributed()  # gloo unless the caller already made a (e.g. nccl) group
    layout = Layout(Path(out_dir), batches, fmt, shard_size, num_classes, class_names)
    # Rank 0 holds the directory for the whole run: a second run on it is refused.
    lock = OutputLock(layout.out) if env.is_main else None
    stop = StopSignal()
    with stop.installed():
        try:
            return _generate(layout, generate, settings_for(config, layout), env, stop,
                             config=config, info=info, resume=resume, overwrite=overwrite,
                             progress=progress, lock=lock)
        except (Abandon, KeyboardInterrupt) as stopped:
            signum = stopped.signum if isinstance(stopped, Abandon) else signal.SIGINT
            done = sum(1 for b in layout.batches if layout.record(b.index).exists())
            raise interrupted(str(layout.out), done, len(layout.batches), signum) from None
        finally:
            if lock is not None and lock.held:
                lock.release()


def _generate(layout: Layout, generate, settings: dict, env, stop: StopSignal, *, config: dict,
              info: dict | None, resume: bool, overwrite: bool, progress,
              lock: OutputLock | None) -> dict:
    total = len(layout.batches)
    # Start: rank 0 alone touches the directory, then tells every rank what remains.
    verdict = None
    if env.is_main:
        try:
            lock.acquire()
            done = start(layout, settings, resume=resume, overwrite=overwrite)
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
            _call(progress, "batch_start", batch, _count_done(layout, done, finished_here, env),
                  total)
        t0 = time.perf_counter()
        result = generate(batch)
        _check_finite(batch, result)
        write_batch(layout, batch, result, seconds=time.perf_counter() - t0, rank=env.rank,
                    session=session)
        finished_here += 1
        if env.is_main:
            _call(progress, "batch_done", _count_done(layout, done, finished_here, env), total)
    if stop.requested:
        raise Abandon(stop.signum)
    # End: every rank's share is on disk; pack shards (spread over ranks), then merge.
    barrier()
    if layout.fmt == "safetensors":
        for k in range(env.rank, layout.num_shards, env.world_size):
            pack_shard(layout, k)
        barrier()
    summary = None
    if env.is_main:
        summary = finish(layout, config, info=info, session=session, world_size=env.world_size,
                         wall=time.perf_counter() - started, resumed=bool(done))
    return broadcast_object(summary)


def _check_finite(batch: Batch, result: GeneratedBatch) -> None:
    """Refuse to mark a batch complete when its optimisation diverged (NaN/inf)."""
    import torch

    bad = sorted(k for k, v in result.losses.items()
                 if isinstance(v, float) and not math.isfinite(v))
    images = torch.as_tensor(result.images01)
    if bad or (images.is_floating_point() and not bool(torch.isfinite(images).all())):
        what = f"loss {', '.join(bad)} became non-finite" if bad else "images are not finite"
        raise InvkitError(
            f"batch {batch.index + 1}: the {what}; the batch was not saved (completed batches "
            "are kept and --resume continues). Lower the learning rate or the prior weights."
        )


def _call(progress, method: str, *args) -> None:
    hook = getattr(progress, method, None) if progress is not None else None
    if hook is not None:
        hook(*args)


def _count_done(layout: Layout, done_before: set, finished_here: int, env) -> int:
    if not env.distributed:
        return len(done_before) + finished_here
    # Other ranks' progress, read from the records they write (no waiting on them).
    with os.scandir(layout.state / "batches") as entries:
        return sum(1 for e in entries if e.name.endswith(".json"))
