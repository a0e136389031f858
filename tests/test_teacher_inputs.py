"""Teacher's input mapping (invkit.specs.Teacher): normalise, resize, bounds, exactly."""

from __future__ import annotations

import pytest
import torch

from invkit.specs import Teacher, TeacherMeta

MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)


def _teacher(size=4):
    return Teacher(torch.nn.Identity(), TeacherMeta("id", size, 10, mean=MEAN, std=STD), "id")


def _column(values, dtype):
    return torch.tensor(values, dtype=dtype).view(1, 3, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_normalize_and_bounds_keep_the_input_dtype(dtype):
    teacher = _teacher()
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    mean, std = _column(MEAN, dtype), _column(STD, dtype)
    # Mean and std are made in the input's dtype: float64 stays exact, half stays half.
    assert torch.equal(teacher.normalize(x), (x - mean) / std)
    assert torch.equal(teacher.denormalize(x), x * std + mean)
    low, high = teacher.pixel_bounds(x)
    assert low.dtype == high.dtype == dtype and low.shape == (1, 3, 1, 1)
    assert torch.equal(low, -mean / std) and torch.equal(high, (1 - mean) / std)


def test_stats_follow_the_input_device():
    x = torch.empty(2, 3, 4, 4, device="meta")
    low, high = _teacher().pixel_bounds(x)
    assert low.device.type == high.device.type == "meta"


def test_prepare_resizes_only_other_sizes(monkeypatch):
    teacher = _teacher(size=4)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    resized = torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear", antialias=True,
                                              align_corners=False)
    assert torch.equal(teacher.prepare(x), teacher.normalize(resized))
    same = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))

    def refuse(*args, **kwargs):
        raise AssertionError("an image already at the input size was resampled")

    monkeypatch.setattr(torch.nn.functional, "interpolate", refuse)
    assert torch.equal(teacher.prepare(same), teacher.normalize(same))
