"""torchrun support: which rank this process is, its device, and the few collectives needed.

invkit never launches processes itself: PyTorch's launcher does
(``torchrun --nproc-per-node K invkit run deepinversion ...``, or multi-node
torchrun). This module reads the environment torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...), picks the device of this
rank and wraps the three collectives the dataset writer uses (a barrier, a
broadcast from rank 0, and setup/teardown), all of which are no-ops in a plain
single process.

Example (what a method's command does before loading its teacher), in a plain process:
    >>> device = local_device("cpu")
    >>> env = init_distributed(device)            # outside torchrun: nothing to join
    >>> env.rank, env.world_size
    (0, 1)

The same lines under ``torchrun --nproc-per-node 8`` on a machine with 8 GPUs, in the
process of local rank 3 (not run as a test: it needs torchrun and CUDA)::

    device = local_device("cuda")     # "cuda:3"
    env = init_distributed(device)    # joins the nccl group (gloo on CPU)
    env.rank, env.world_size          # (3, 8)
"""

from __future__ import annotations

import atexit
import os
import re
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from invkit.errors import InvkitError

#: How long a rank may wait at the start or end for the others. Ranks wait at the
#: end for the slowest one to finish its share of batches, which can take long on
#: uneven hardware; a crashed rank is detected by torchrun itself, not this timeout.
TIMEOUT = timedelta(hours=int(os.environ.get("INVKIT_DIST_TIMEOUT_HOURS", "12")))


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 outside torchrun).

    Example:
        >>> dist_env()
        DistEnv(rank=0, world_size=1, local_rank=0)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """The rank, world size and local rank from torchrun's environment variables.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, RANK="1", WORLD_SIZE="2", LOCAL_RANK="1"):
        ...     dist_env()
        DistEnv(rank=1, world_size=2, local_rank=1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # A caller-made process group is the truth (e.g. not launched by torchrun).
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistEnv(dist.get_rank(), dist.get_world_size(), local)
    return DistEnv(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def is_main_process() -> bool:
    """True on rank 0 (and outside torchrun): the process that shows progress and prints.

    Example:
        >>> if is_main_process(): print("shown once")
        shown once
    """
    return dist_env().is_main


#: The device strings :func:`local_device` accepts, for error messages.
VALID_DEVICES = "auto, cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"^(auto|cpu|cuda|mps)(?::(\d+))?$")


def local_device(requested: str | None = None) -> str:
    """The device this rank should use: under torchrun, CUDA devices get ``cuda:LOCAL_RANK``.

    ``requested`` is what the user asked for (``None``/``"auto"``: CUDA when available,
    else CPU). An explicit index (``"cuda:1"``) is kept as given. A malformed string
    (``gpu``, ``cuda:x``), a device this machine lacks (``cuda`` without CUDA,
    ``cuda:99``) is an :class:`~invkit.errors.InvkitError` naming the valid forms.

    Example:
        >>> local_device("cpu")
        'cpu'
        >>> local_device("gpu")
        Traceback (most recent call last):
        invkit.errors.InvkitError: device 'gpu' is not valid (valid: auto, cpu, cuda, cuda:N, mps)

    On local rank 2 of a torchrun job on a CUDA machine (not run as a test)::

        local_device("cuda")           # 'cuda:2'
    """
    import torch

    text = "auto" if requested is None else str(requested).strip()
    match = _DEVICE.match(text or "auto")
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise InvkitError(f"device {requested!r} is not valid (valid: {VALID_DEVICES})")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return "cpu"
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InvkitError(f"device {requested!r}: this machine has no MPS (Apple GPU) "
                              "device; use --device cpu")
        return "mps"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        built = torch.version.cuda or "none"
        raise InvkitError(f"device {requested!r}: CUDA is not available on this machine "
                          f"(torch {torch.__version__}, built for CUDA {built}); use --device "
                          "cpu")
    if index is None:
        env = dist_env()
        index = env.local_rank if env.distributed else torch.cuda.current_device()
        if int(index) >= count:
            raise InvkitError(f"local rank {index} has no CUDA device: this machine has "
                              f"{count} (start at most {count} processes per node)")
    elif int(index) >= count:
        raise InvkitError(f"device {requested!r}: this machine has {count} CUDA device(s), "
                          f"cuda:0 to cuda:{count - 1}")
    torch.cuda.set_device(int(index))
    return f"cuda:{int(index)}"


def init_distributed(device: str | None = None) -> DistEnv:
    """Join torchrun's process group if launched by torchrun; a no-op otherwise.

    The backend is nccl when ``device`` is a CUDA device and gloo otherwise (the
    dataset writer only exchanges small Python objects, which both handle).
    Idempotent: calling it again, or after the caller made its own group, does nothing.

    Example:
        >>> init_distributed("cpu")   # outside torchrun; under it: a gloo group of WORLD_SIZE ranks
        DistEnv(rank=0, world_size=1, local_rank=0)
    """
    import torch.distributed as dist

    env = dist_env()
    if not env.distributed or not dist.is_available() or dist.is_initialized():
        return env
    backend = "nccl" if device and str(device).startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    atexit.register(_destroy)
    return dist_env()


def shutdown_distributed() -> None:
    """Leave torchrun's process group after a successful run; under torchrun, exit 0.

    Outside a process group this does nothing and returns.

    Every rank meets at a barrier, then the group is destroyed while the interpreter is
    fully alive: gloo's worker threads torn down at interpreter exit can abort the process
    ("terminate called without an active exception") after all the work is done. Only for
    the success path: after an error another rank may never reach the barrier.
    """
    was_distributed = _active()
    barrier()
    _destroy()
    if was_distributed:
        # Even after a clean destroy, gloo's transport threads are sometimes torn down
        # by C++ static destructors at exit and abort the worker (about 1 run in 8
        # here), which torchrun reports as a failure of a finished run. All work is
        # written and every rank has passed the barrier, so leave without those
        # destructors.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if not _active():
        return
    if dist.get_backend() == "nccl":
        import torch

        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (each rank passes its own; only rank 0's counts).

    Example:
        >>> def check():                  # e.g. what only rank 0 may decide
        ...     return {"resume": True}
        >>> broadcast_object(check() if is_main_process() else None)
        {'resume': True}
    """
    import torch.distributed as dist

    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
