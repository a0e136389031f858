"""The memory guard: the estimate's exact arithmetic, where the available figure comes
from (RAM: MemAvailable, else sysconf's free pages; free CUDA memory), the refusal's exact message, the limit itself
accepted and one byte more refused, and the decimal units of format_bytes."""

from __future__ import annotations

import os

import pytest
import torch

from invkit import resources
from invkit.errors import InvkitError
from invkit.resources import (
    available_bytes, check_memory, estimate_inversion_bytes, format_bytes,
)


def test_the_estimate_is_values_times_copies_plus_activations_plus_the_model():
    assert estimate_inversion_bytes(1, 3, 32) == 3 * 32 * 32 * (8 + 64) * 4
    assert estimate_inversion_bytes(2, 1, 5, activations_per_value=0) == 2 * 25 * 8 * 4
    assert estimate_inversion_bytes(3, 2, 4, activations_per_value=2.5, model_bytes=7,
                                    bytes_per_value=2) == 3 * 2 * 16 * 21 + 7
    assert estimate_inversion_bytes("2", "3", "4") == 2 * 3 * 16 * 72 * 4


@pytest.mark.parametrize("args, message", [
    ((0, 3, 32), "batch=0 must be at least 1"),
    ((1, 0, 32), "channels=0 must be at least 1"),
    ((1, 3, -2), "size=-2 must be at least 1"),
])
def test_a_dimension_below_one_is_refused_by_name(args, message):
    with pytest.raises(InvkitError) as err:
        estimate_inversion_bytes(*args)
    assert str(err.value) == message


def test_available_ram_is_pages_times_page_size(monkeypatch, tmp_path):
    """Without /proc/meminfo: free pages times the page size."""
    monkeypatch.setattr(resources, "MEMINFO", str(tmp_path / "absent"))
    sizes = {"SC_AVPHYS_PAGES": 10, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: sizes[name])
    assert available_bytes("cpu") == (40960, "RAM")
    assert available_bytes(None) == (40960, "RAM")
    assert available_bytes() == (40960, "RAM")
    sizes["SC_AVPHYS_PAGES"] = 0
    assert available_bytes("cpu") == (None, "RAM")
    sizes.update(SC_AVPHYS_PAGES=1, SC_PAGE_SIZE=0)
    assert available_bytes("cpu") == (None, "RAM")
    sizes.update(SC_AVPHYS_PAGES=1, SC_PAGE_SIZE=1)
    assert available_bytes("cpu") == (1, "RAM")


def test_available_ram_counts_reclaimable_cache(monkeypatch, tmp_path):
    """Linux: MemAvailable (free plus cache the kernel gives back), not free pages only;
    an unreadable or odd line falls back to the free pages."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         2000000 kB\n"
                       "MemAvailable:   20000000 kB\nBuffers:  1 kB\n")
    monkeypatch.setattr(resources, "MEMINFO", str(meminfo))
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_AVPHYS_PAGES": 3,
                                                     "SC_PAGE_SIZE": 4096}[name])
    assert available_bytes("cpu") == (20000000 * 1024, "RAM")
    for text in ("MemTotal: 1 kB\n", "MemAvailable: 5 MB\n", "MemAvailable: x kB\n", ""):
        meminfo.write_text(text)
        assert available_bytes("cpu") == (3 * 4096, "RAM"), text


@pytest.mark.parametrize("error", [ValueError, OSError, AttributeError])
def test_ram_not_reported_is_none(monkeypatch, tmp_path, error):
    monkeypatch.setattr(resources, "MEMINFO", str(tmp_path / "absent"))

    def fail(name):
        raise error(name)

    monkeypatch.setattr(os, "sysconf", fail)
    assert available_bytes("cpu") == (None, "RAM")


def test_cuda_devices_report_the_driver_free_memory(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "MEMINFO", str(tmp_path / "absent"))
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: asked.append(d) or (123, 456))
    assert available_bytes("cuda:1") == (123, "free on cuda:1")
    assert asked == [torch.device("cuda:1")]
    monkeypatch.setattr(os, "sysconf", lambda name: 2)
    assert available_bytes("cpu") == (4, "RAM")  # not a CUDA device: RAM even so
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_bytes("cuda") == (4, "RAM")  # no CUDA: the machine's RAM


def test_the_limit_is_accepted_and_one_byte_more_is_refused_with_the_figures():
    assert check_memory(8 * 10 ** 9, "the batch", available=8 * 10 ** 9) is None
    with pytest.raises(InvkitError) as err:
        check_memory(8 * 10 ** 9 + 1, "the batch", available=8 * 10 ** 9)
    assert str(err.value) == ("the batch needs about 8.0 GB of memory but only 8.0 GB is "
                              "available (given); lower the batch size or resolution")
    with pytest.raises(InvkitError) as err:
        check_memory(2500, "x", available=0, hint="use fewer")
    assert str(err.value) == ("x needs about 2.5 kB of memory but only 0 B is available "
                              "(given); use fewer")


def test_the_measured_figure_and_its_source_are_used_when_none_is_given(monkeypatch):
    seen = []

    def measured(device):
        seen.append(device)
        return 1000, "free on cuda:0"

    monkeypatch.setattr(resources, "available_bytes", measured)
    check_memory(1000, "w", "cuda:0")
    with pytest.raises(InvkitError) as err:
        check_memory(1001, "w", "cuda:0")
    assert str(err.value) == ("w needs about 1.0 kB of memory but only 1.0 kB is available "
                              "(free on cuda:0); lower the batch size or resolution")
    assert seen == ["cuda:0", "cuda:0"]
    monkeypatch.setattr(resources, "available_bytes", lambda device: (None, "RAM"))
    assert check_memory(10 ** 30, "anything") is None  # unknown: nothing refused


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1.9, "1 B"), (999, "999 B"), (1000, "1.0 kB"), (1500, "1.5 kB"),
    (-1500, "-1.5 kB"), (999_949, "999.9 kB"), (10 ** 6, "1.0 MB"), (2.5e9, "2.5 GB"),
    (240e9, "240.0 GB"), (7.25e12, "7.2 TB"), (1e15, "1.0 PB"), (3e18, "3000.0 PB"),
])
def test_format_bytes_uses_decimal_units_with_one_decimal(n, text):
    assert format_bytes(n) == text
