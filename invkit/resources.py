"""Refuse work that cannot fit in memory before allocating it, naming estimate and limit.

A typo such as ``--resolution 100000`` would otherwise try to allocate hundreds of GB
and die with a traceback (or be killed by the kernel) after the output directory was
made. :func:`estimate_inversion_bytes` gives a rough upper-bound-ish figure for one
inversion batch; :func:`check_memory` compares an estimate with what is available:
free CUDA memory on a CUDA device, else the machine's available RAM.

Example:
    >>> need = estimate_inversion_bytes(batch=84, channels=3, size=100000)
    >>> check_memory(need, "an inversion batch at 100000 px", device="cpu")
    Traceback (most recent call last):
    invkit.errors.InvkitError: an inversion batch at 100000 px needs about 725.8 TB of
    memory but only ... is available (RAM); lower the batch size or resolution
"""

from __future__ import annotations

import os

from invkit.errors import InvkitError

#: Float32 values a classifier keeps for the backward pass per input value (what
#: autograd saves, weights excluded; measured with ``saved_tensors_hooks``, eval mode,
#: 224 px: ResNet-18 37, MobileNetV2 130, ResNet-50 143; the digits teacher at 32 px
#: 23). 64 sits in that range on the low side, so the check refuses absurd requests
#: without refusing work that would fit.
ACTIVATIONS_PER_INPUT_VALUE = 64
#: Per input value besides activations: the image, its gradient, Adam's two moments,
#: jitter/flip copies (float32 each).
IMAGE_COPIES = 8


def estimate_inversion_bytes(batch: int, channels: int, size: int, *,
                             activations_per_value: float = ACTIVATIONS_PER_INPUT_VALUE,
                             model_bytes: int = 0, bytes_per_value: int = 4) -> int:
    """A rough estimate of the memory one inversion batch needs, in bytes.

    ``batch`` images of ``channels`` x ``size`` x ``size`` values: the image and its
    optimiser state (``IMAGE_COPIES`` copies) plus the network's activations kept for
    the backward pass (``activations_per_value`` per input value), plus ``model_bytes``
    (the teacher's weights, if known). Meant to catch absurd requests (off by 100x),
    not to predict usage to the megabyte.

    Example:
        >>> estimate_inversion_bytes(batch=1, channels=3, size=32)
        884736
    """
    for name, value in (("batch", batch), ("channels", channels), ("size", size)):
        if int(value) < 1:
            raise InvkitError(f"{name}={value} must be at least 1")
    values = int(batch) * int(channels) * int(size) * int(size)
    per_value = (IMAGE_COPIES + activations_per_value) * bytes_per_value
    return int(values * per_value) + int(model_bytes)


def available_bytes(device: str | None = "cpu") -> tuple[int | None, str]:
    """Memory available for new allocations on ``device`` and where it comes from.

    CUDA devices: free memory reported by the driver. Otherwise: the machine's
    available RAM (Linux's ``MemAvailable``, which counts reclaimable cache; else free
    pages from ``os.sysconf``; ``None`` when the system reports neither).

    Example:
        >>> free, source = available_bytes("cpu")
        >>> source, free > 0
        ('RAM', True)
    """
    if device and str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free), f"free on {device}"
    return _available_ram(), "RAM"


#: Linux's estimate of memory available without swapping (free plus reclaimable cache).
MEMINFO = "/proc/meminfo"


def _available_ram() -> int | None:
    # Free pages alone exclude the page cache the kernel hands back on demand: after a big
    # install or file copy they read a few GB on a machine with 20 GB to spare.
    meminfo = _meminfo_available()
    if meminfo is not None:
        return meminfo
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        page = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not reported on this system
        return None
    if pages <= 0 or page <= 0:
        return None
    return int(pages) * int(page)


def _meminfo_available() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes; None where it is not reported."""
    try:
        with open(MEMINFO, encoding="ascii") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key == "MemAvailable":
                    kib, unit = value.split()
                    return int(kib) * 1024 if unit == "kB" else None
    except (OSError, ValueError):
        return None
    return None


def check_memory(estimate_bytes: int, what: str, device: str | None = "cpu", *,
                 available: int | None = None, hint: str = "lower the batch size or "
                 "resolution") -> None:
    """Refuse ``what`` if ``estimate_bytes`` exceeds the memory available on ``device``.

    ``available`` overrides the measured figure (tests; a user-set budget). Nothing is
    refused when the available memory cannot be determined.

    Example:
        >>> check_memory(10 ** 15, "the batch", available=8 * 10 ** 9)
        Traceback (most recent call last):
        invkit.errors.InvkitError: the batch needs about 1.0 PB of memory but only
        8.0 GB is available (given); lower the batch size or resolution
    """
    source = "given"
    if available is None:
        available, source = available_bytes(device)
    if available is None or estimate_bytes <= available:
        return
    raise InvkitError(f"{what} needs about {format_bytes(estimate_bytes)} of memory but only "
                      f"{format_bytes(available)} is available ({source}); {hint}")


def format_bytes(n: int | float) -> str:
    """``n`` bytes in decimal units, one decimal.

    Example:
        >>> format_bytes(240e9)
        '240.0 GB'
    """
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover - the loop always returns


__all__ = ["estimate_inversion_bytes", "available_bytes", "check_memory", "format_bytes"]
