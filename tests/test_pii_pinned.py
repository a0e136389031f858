"""Plug-In Inversion pinned exactly (group h8): config checks and messages, Centering's
mask and plan, Zoom/ColorShift/flip against hand computations, the seeded draws, the
checkpoints, the frozen border outside the centre, and ``configure``.
"""

from __future__ import annotations

import math

import pytest
import torch

import invkit_plugins.plugin_inversion as pii_plugin
from invkit import verifier_predictions
from invkit.errors import InvkitError
from invkit.methods import Context
from invkit.objective import build_objective, parse_prior
from invkit.schedules import build_schedule
from invkit.specs import Stage, TeacherMeta
from invkit_plugins.plugin_inversion import options as pii_options
from invkit_plugins.plugin_inversion.method import (
    CENTERING_PLAN, Draw, PIIConfig, PlugInInversion, _check_targets, _to_floats,
    center_mask, color_shift, default_objective, zoom,
)
from invkit_plugins.plugin_inversion.options import PIIOptions, configure
from tests.di_tiny import tiny_teacher
from tests.expect import invkit_error


# ------------------------------------------------------------------ PIIConfig


def test_config_defaults():
    c = PIIConfig()
    assert CENTERING_PLAN == (Stage(1, 4), Stage(1, 2), Stage(2, 1))
    assert (c.plan, c.iterations, c.lr, c.betas, c.lr_schedule, c.ensemble) == (
        CENTERING_PLAN, 2000, 0.1, (0.9, 0.999), "cosine", 8)
    assert (c.color_shift, c.zoom, c.flip, c.grayscale, c.init_std, c.amp) == (
        1.0, 0.5, True, False, 0.2, "fp32")
    assert (c.resolution, c.save_every) == (None, 100)
    assert c.stages() == (Stage(500, 4), Stage(500, 2), Stage(1000, 1))


def test_config_errors_exact_and_bounds():
    assert invkit_error(PIIConfig, amp="fp64") == "amp 'fp64' is not one of: fp32, fp16, bf16"
    assert invkit_error(PIIConfig, plan=()) == "the plan has no stages"
    assert PIIConfig(iterations=3).stages() == (Stage(1, 4), Stage(1, 2), Stage(1, 1))
    assert invkit_error(PIIConfig, iterations=2) == (
        "--iterations 2 is too few for a 3-stage plan (need at least 3)")
    assert PIIConfig(iterations=None).stages() == CENTERING_PLAN
    assert invkit_error(PIIConfig, lr=0.0) == "--lr 0.0 must be a positive number"
    assert invkit_error(PIIConfig, lr=float("nan")) == "--lr nan must be a positive number"
    assert PIIConfig(ensemble=1).ensemble == 1
    assert invkit_error(PIIConfig, ensemble=0) == "--ensemble 0 must be at least 1"
    assert PIIConfig(color_shift=0).color_shift == 0
    assert PIIConfig(color_shift=5).color_shift == 5
    assert invkit_error(PIIConfig, color_shift=-0.5) == "--color-shift -0.5 must be between 0 and 5"
    assert invkit_error(PIIConfig, color_shift=5.5) == "--color-shift 5.5 must be between 0 and 5"
    assert PIIConfig(zoom=1).zoom == 1
    assert invkit_error(PIIConfig, zoom=0) == "--zoom 0 must be in (0, 1] (1: no zoom)"
    assert invkit_error(PIIConfig, zoom=1.5) == "--zoom 1.5 must be in (0, 1] (1: no zoom)"
    assert PIIConfig(save_every=1).save_every == 1
    assert invkit_error(PIIConfig, save_every=0) == "--save-every 0 must be at least 1"


def test_config_to_dict():
    d = PIIConfig(iterations=8, ensemble=2).to_dict()
    assert d == {
        "plan": [{"iterations": 2, "downsample": 4}, {"iterations": 2, "downsample": 2},
                 {"iterations": 4, "downsample": 1}],
        "iterations": 8, "lr": 0.1, "betas": [0.9, 0.999], "lr_schedule": "cosine",
        "ensemble": 2, "color_shift": 1.0, "zoom": 0.5, "flip": True, "grayscale": False,
        "init_std": 0.2, "amp": "fp32", "resolution": None, "save_every": 100}


# ------------------------------------------------------------------ augmentations


def _square(size, start, side):
    m = torch.zeros(1, 1, size, size)
    m[..., start:start + side, start:start + side] = 1
    return m


def test_center_mask_squares():
    assert torch.equal(center_mask(8, 4), _square(8, 3, 2))
    assert torch.equal(center_mask(5, 2), _square(5, 1, 2))
    assert torch.equal(center_mask(7, 2), _square(7, 2, 3))
    assert torch.equal(center_mask(3, 4), _square(3, 1, 1))   # at least one pixel
    assert torch.equal(center_mask(4, 1), torch.ones(1, 1, 4, 4))
    assert center_mask(4, 1).dtype == torch.float32


def test_zoom_samples_the_crop_hand_computed():
    # A ramp image is sampled exactly by bilinear interpolation (clamped at the border).
    w = 6
    cols = torch.arange(w, dtype=torch.float32)
    x = (cols.view(1, -1) + 10 * cols.view(-1, 1)).expand(2, 1, w, w).contiguous()
    scale = torch.tensor([1.0, 0.5])
    offset = torch.tensor([[0.0, 0.0], [1.0, -0.5]])
    out = zoom(x, scale, offset)
    assert torch.allclose(out[0], x[0], atol=1e-5)

    def coords(s, o):
        t = o * (1 - s)
        xn = (2 * cols + 1) / w - 1
        return (((s * xn + t + 1) * w - 1) / 2).clamp(0, w - 1)

    px, py = coords(0.5, 1.0), coords(0.5, -0.5)
    want = px.view(1, -1) + 10 * py.view(-1, 1)
    assert torch.allclose(out[1, 0], want, atol=1e-4)


def test_color_shift_is_affine_per_channel():
    x = torch.tensor([[[[0.5]], [[-1.0]]]])
    mu = torch.tensor([[[[0.25]], [[1.0]]]])
    log_sigma = torch.tensor([[[[math.log(2.0)]], [[0.0]]]])
    assert torch.allclose(color_shift(x, mu, log_sigma), torch.tensor([[[[1.25]], [[0.0]]]]))


def test_draw_sample_from_one_uniform_block():
    cfg = PIIConfig(zoom=0.6, color_shift=0.5)
    d = Draw.sample(3, 2, cfg, torch.Generator().manual_seed(2))
    u = torch.rand(3, 8, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(d.scale, 0.6 + 0.4 * u[:, 0])
    assert torch.allclose(d.offset, u[:, 1:3] * 2 - 1)
    assert torch.equal(d.flip, u[:, 3] < 0.5)
    assert torch.allclose(d.mu, ((u[:, 4:6] * 2 - 1) * 0.5).view(3, 2, 1, 1))
    assert torch.allclose(d.log_sigma, ((u[:, 6:8] * 2 - 1) * 0.5).view(3, 2, 1, 1))
    off = Draw.sample(3, 2, PIIConfig(flip=False), torch.Generator().manual_seed(2))
    assert not off.flip.any() and off.flip.dtype == torch.bool


# ------------------------------------------------------------------ view / to_input


def _pii(**kw):
    base = dict(iterations=4, ensemble=2, lr=0.05, save_every=2)
    base.update(kw)
    return PlugInInversion(tiny_teacher(), build_objective([parse_prior("cross-entropy")]),
                           config=PIIConfig(**base))


def test_view_orders_copies_and_applies_each_augmentation():
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    n, e = 2, 3
    draw = Draw.sample(n * e, 3, PIIConfig(), torch.Generator().manual_seed(1))
    pii = _pii(zoom=1, flip=False, color_shift=0)
    copies = x.repeat_interleave(e, dim=0)
    assert torch.equal(pii.view(x, draw, e), pii.to_input(copies))
    flipped = torch.stack([c.flip(2) if f else c for c, f in zip(copies, draw.flip)])
    assert draw.flip.any() and not draw.flip.all()
    assert torch.allclose(_pii(zoom=1, color_shift=0).view(x, draw, e),
                          pii.to_input(flipped))
    shifted = (flipped - 0.5) * draw.log_sigma.exp() + draw.mu + 0.5
    assert torch.allclose(_pii(zoom=1).view(x, draw, e), pii.to_input(shifted), atol=1e-6)
    zoomed = zoom(copies, draw.scale, draw.offset)
    assert torch.allclose(_pii(flip=False, color_shift=0).view(x, draw, e),
                          pii.to_input(zoomed), atol=1e-6)


def test_to_input_expands_grey_and_normalises():
    pii = _pii()
    grey = torch.full((1, 1, 2, 2), 0.7)
    want = (0.7 - torch.tensor([0.5, 0.4, 0.3])) / torch.tensor([0.25, 0.2, 0.3])
    assert torch.allclose(pii.to_input(grey), want.view(1, 3, 1, 1).expand(1, 3, 2, 2))


# ------------------------------------------------------------------ generate


def test_targets_checked_exactly():
    msg = "targets must be a non-empty list of class indices"
    for bad in ([], torch.zeros(1, 2, dtype=torch.long)):
        with pytest.raises(InvkitError) as err:
            _check_targets(bad, 4, "cpu")
        assert str(err.value) == msg
    for bad in ([4], [-1, 1]):
        with pytest.raises(InvkitError) as err:
            _check_targets(bad, 4, "cpu")
        assert str(err.value) == (
            f"target {max(bad)} is out of range for a 4-class teacher (valid: 0..3)")
    out = _check_targets((0, 3), 4, "cpu")
    assert out.dtype == torch.long and out.tolist() == [0, 3]


def test_generate_checkpoints_and_frozen_border():
    seen = []
    pii = _pii(iterations=8, save_every=3, lr=0.2)
    result = pii.generate([1, 2], seed=5, callback=seen.append)
    sched = build_schedule("cosine")
    rows = [(c.stage, c.stages, c.iteration, c.total_iterations, c.stage_iteration,
             c.stage_iterations, c.description, c.losses is None) for c in seen]
    assert rows == [
        (1, 3, 1, 8, 1, 2, "centre 4px", True), (1, 3, 2, 8, 2, 2, "centre 4px", True),
        (2, 3, 3, 8, 1, 2, "centre 8px", False), (2, 3, 4, 8, 2, 2, "centre 8px", True),
        (3, 3, 5, 8, 1, 4, "", True), (3, 3, 6, 8, 2, 4, "", False),
        (3, 3, 7, 8, 3, 4, "", True), (3, 3, 8, 8, 4, 4, "", False)]
    assert [c.lr for c in seen] == [0.2 * sched(i, n) for i, n in
                                    ((0, 2), (1, 2), (0, 2), (1, 2), (0, 4), (1, 4),
                                     (2, 4), (3, 4))]
    assert [c.verifier_accuracy for c in seen] == [None] * 8
    # Outside the central 8 px square nothing moved during the first two stages.
    start = (0.5 + 0.2 * torch.randn(2, 3, 16, 16, generator=torch.Generator()
                                     .manual_seed(5))).clamp(0, 1)
    outside = 1 - center_mask(16, 2)
    mid = seen[2].inputs
    assert torch.allclose(mid * outside, pii.to_input(start) * outside, atol=1e-6)
    inner4 = center_mask(16, 2) - center_mask(16, 4)
    assert not torch.allclose(mid * inner4, pii.to_input(start) * inner4)
    final = result.inputs
    assert not torch.allclose(final * outside, pii.to_input(start) * outside)
    assert torch.equal(final, seen[-1].inputs)
    assert sorted(result.losses) == ["cross-entropy", "total"]
    assert result.losses == seen[-1].losses
    assert len(result.timings) == 3
    low, high = pii.teacher.pixel_bounds(torch.empty(0))
    assert bool(((final >= low - 1e-5) & (final <= high + 1e-5)).all())


def test_generate_seeded_grey_and_verifier():
    a = _pii().generate([0, 1], seed=2)
    assert torch.equal(a.inputs, _pii().generate([0, 1], seed=2).inputs)
    assert not torch.equal(a.inputs, _pii().generate([0, 1], seed=3).inputs)
    g = _pii(grayscale=True).generate([0, 1], seed=2).images01
    assert torch.allclose(g[:, 0], g[:, 2], atol=1e-6)
    seen = []
    verifier = tiny_teacher(1, "tiny-bn-verifier")
    pii = PlugInInversion(tiny_teacher(), None, verifier=verifier,
                          config=PIIConfig(iterations=3, ensemble=1, save_every=2))
    assert pii.objective.describe() == "1*cross-entropy"
    result = pii.generate([0, 1, 2, 3], seed=0, callback=seen.append)
    assert [c.verifier_accuracy is None for c in seen] == [True, False, False]
    for c in seen[1:]:
        images01 = pii.teacher.denormalize(c.inputs).clamp(0, 1)
        pred = verifier_predictions(pii.verifier, images01)
        assert c.verifier_accuracy == float((pred == torch.arange(4)).float().mean())
    assert result.verifier_pred.shape == (4,)


def test_defaults_and_floats():
    assert default_objective().describe() == "1*cross-entropy"
    pii = PlugInInversion(tiny_teacher())
    assert pii.config == PIIConfig() and pii.student is None and pii.verifier is None
    out = _to_floats(torch.tensor(1.5), {"b": torch.tensor(0.5), "a": torch.tensor(1.0)})
    assert out == {"b": 0.5, "a": 1.0, "total": 1.5} and list(out) == ["b", "a", "total"]


# ------------------------------------------------------------------ the plugin module


def test_centering_plan_and_its_errors():
    assert pii_plugin.centering_plan() == (Stage(500, 4), Stage(500, 2), Stage(1000, 1))
    assert pii_plugin.centering_plan(400) == (Stage(100, 4), Stage(100, 2), Stage(200, 1))
    assert pii_plugin.centering_plan(10, 1) == (Stage(10, 1),)
    assert pii_plugin.centering_plan(2, 2) == (Stage(1, 2), Stage(1, 1))
    assert pii_plugin.centering_plan(80, 4) == (
        Stage(13, 8), Stage(13, 4), Stage(13, 2), Stage(41, 1))
    assert pii_plugin.centering_plan(3, 3) == (Stage(1, 4), Stage(1, 2), Stage(1, 1))
    for iterations, stages in ((10, 0), (2, 3)):
        with pytest.raises(InvkitError) as err:
            pii_plugin.centering_plan(iterations, stages)
        assert str(err.value) == (
            f"pii-centering needs 1 <= stages <= iterations "
            f"(got stages={stages}, iterations={iterations})")


def test_plugin_lazy_attributes_factory_and_registrations():
    assert pii_plugin.PlugInInversion is PlugInInversion
    assert pii_plugin.PIIConfig is PIIConfig
    with pytest.raises(AttributeError) as err:
        pii_plugin.Missing  # noqa: B018
    assert str(err.value) == (
        "module 'invkit_plugins.plugin_inversion' has no attribute 'Missing'")
    teacher, obj, config = tiny_teacher(), default_objective(), PIIConfig(ensemble=3)
    student = tiny_teacher(1)
    made = pii_plugin.make_generator(teacher, obj, config=config, student=student,
                                     verifier=tiny_teacher(1))
    assert (made.teacher, made.objective, made.config, made.student) == (
        teacher, obj, config, student)
    assert made.verifier is not None
    (spec,) = list(pii_plugin.invkit_methods())
    assert (spec.name, spec.needs_batchnorm, spec.factory, spec.configure) == (
        "pii", False, pii_plugin.make_generator, configure)
    (plan,) = list(pii_plugin.invkit_schedules())
    assert (plan.name, plan.kind, plan.factory) == ("pii-centering", "plan",
                                                    pii_plugin.centering_plan)
    assert [(o.name, o.default) for o in plan.options] == [("iterations", 2000),
                                                           ("stages", 3)]


# ------------------------------------------------------------------ configure


def _context(size=16, grey=False, **kw):
    meta = TeacherMeta("t", size, 4, mean=(0.5,) * 3, std=(0.25,) * 3, grayscale=grey)
    return Context(meta, **kw)


def test_configure_passes_every_option_and_checks_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(pii_options, "check_memory", lambda *a: calls.append(a))
    monkeypatch.setattr(pii_options, "estimate_inversion_bytes", lambda *a: a)
    options = PIIOptions(iterations=30, lr=0.3, ensemble=2, color_shift=0.4, zoom=0.9,
                         lr_schedule="constant", flip=False, resolution=8)
    config = configure(options, _context(precision="bf16", checkpoint_every=7,
                                         batch_size=5, device="meta"))
    assert config == PIIConfig(plan=pii_plugin.centering_plan(), iterations=30, lr=0.3, ensemble=2,
                               color_shift=0.4, zoom=0.9, lr_schedule="constant",
                               flip=False, resolution=8, grayscale=False, amp="bf16",
                               save_every=7)
    assert calls == [((10, 3, 8), "a batch of 5 images x 2 copies at 8 px", "meta")]
    grey = configure(PIIOptions(), _context(grey=True))
    assert grey == PIIConfig(plan=pii_plugin.centering_plan(), grayscale=True)
    assert configure(PIIOptions(grayscale=False), _context(grey=True)).grayscale is False
    planned = configure(PIIOptions(plan="pii-centering,iterations=4,stages=2"), _context())
    assert planned.plan == (Stage(2, 2), Stage(2, 1))


def test_configure_refusals_exact():
    with pytest.raises(InvkitError) as err:
        configure(PIIOptions(plan="pii-centering,stages=6"), _context(16))
    assert str(err.value) == (
        "the plan's downsample 32 leaves no pixel of a 16 px image to optimise")
    assert configure(PIIOptions(plan="pii-centering,stages=5"), _context(16)).plan[0] == (
        Stage(250, 16))
    with pytest.raises(InvkitError, match="^schedule 'nope'|nope"):
        configure(PIIOptions(lr_schedule="nope"), _context())
    with pytest.raises(InvkitError) as err:
        configure(PIIOptions(lr_schedule="single-stage"), _context())
    assert str(err.value).startswith("schedule 'single-stage' is a plan schedule, not a lr")
