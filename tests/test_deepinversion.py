"""DeepInversion's loop: objective terms, stage plans and learning rates, determinism, bf16."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from invkit.errors import InvkitError
from invkit.objective import Step, build_objective, parse_prior
from invkit.priors import L2Norm, TotalVariation
from invkit.registry import registry
from invkit.specs import Stage
from invkit_plugins.deepinversion import DeepInversion, DIConfig
from invkit_plugins.deepinversion.method import Pixels, augment
from invkit.methods import Context, choose_preset
from invkit.specs import TeacherMeta
from invkit_plugins.deepinversion import DIOptions, configure
from invkit_plugins.deepinversion.presets import (
    DEFAULT_PRIORS, IMAGENET_TARGETS, PRESETS, SETTINGS,
)
from tests.di_tiny import tiny_teacher

PRIORS = ["cross-entropy", "bn-stats:0.05,first_bn_multiplier=2", "tv-l2:1e-3", "l2:1e-5"]


def objective(priors=PRIORS):
    return build_objective([parse_prior(p) for p in priors])


def small_config(**kw):
    base = dict(plan=(Stage(6, 2), Stage(6, 1)), lr=0.1, jitter=2, flip=True,
                lr_schedule="warmup-cosine,warmup=3")
    base.update(kw)
    return DIConfig(**base)


# ------------------------------------------------------------------ loss terms (spec)


def test_tv_terms_use_all_four_neighbour_differences():
    x = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    d = {"h": [], "v": [], "d1": [], "d2": []}
    n, c, h, w = x.shape
    for b in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    if j + 1 < w:
                        d["h"].append(x[b, ch, i, j] - x[b, ch, i, j + 1])
                    if i + 1 < h:
                        d["v"].append(x[b, ch, i, j] - x[b, ch, i + 1, j])
                    if i + 1 < h and j + 1 < w:
                        # spec: d3 = x[1:, :-1] - x[:-1, 1:]; d4 = x[:-1, :-1] - x[1:, 1:]
                        d["d1"].append(x[b, ch, i + 1, j] - x[b, ch, i, j + 1])
                        d["d2"].append(x[b, ch, i, j] - x[b, ch, i + 1, j + 1])
    tv2 = sum(math.sqrt(sum(float(v) ** 2 for v in vals)) for vals in d.values())
    tv1 = sum(sum(abs(float(v)) for v in vals) / len(vals) for vals in d.values())
    step = Step(x, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), tiny_teacher())
    assert TotalVariation(p=2)(step).item() == pytest.approx(tv2, rel=1e-5)
    assert TotalVariation(p=1)(step).item() == pytest.approx(tv1, rel=1e-5)
    l2 = sum(math.sqrt(float((x[b] ** 2).sum())) for b in range(n)) / n
    assert L2Norm()(step).item() == pytest.approx(l2, rel=1e-5)


def test_default_objective_is_the_published_imagenet_one():
    assert DEFAULT_PRIORS == (
        "cross-entropy:1", "bn-stats:0.01,first_bn_multiplier=10", "tv-l2:0.0001", "l2:1e-05")
    method = DeepInversion(tiny_teacher())
    assert method.objective.describe() == (
        "1*cross-entropy + 0.01*bn-stats(first_bn_multiplier=10) + 0.0001*tv-l2 + 1e-05*l2")


def preset(name):
    return choose_preset(PRESETS, None, name)


def preset_config(name, meta=TeacherMeta("t", 224, 1000)):
    return configure(preset(name).options, Context(meta))


def test_presets_hold_the_published_defaults():
    imagenet = preset("imagenet")
    config = preset_config("imagenet")
    assert (imagenet.bs, config.lr, config.jitter, config.flip) == (84, 0.2, 30, True)
    assert config.stages() == SETTINGS[0].plan and config.betas == (0.5, 0.9) and config.clip
    assert len(IMAGENET_TARGETS) == 42 and imagenet.targets == IMAGENET_TARGETS
    assert imagenet.verifier == "mobilenet_v2"
    cifar = preset("cifar10")
    config = preset_config("cifar10", TeacherMeta("t", 32, 10))
    assert (cifar.bs, config.lr, config.jitter) == (256, 0.1, 2)
    assert config.stages() == (Stage(2000),)
    assert cifar.priors == ("bn-stats:10,first_bn_multiplier=1", "tv-l2:2.5e-5", "l2:0")
    digits = preset_config("digits", TeacherMeta("d", 32, 10, grayscale=True))
    assert digits.flip is False and digits.grayscale is True and digits.stages() == (Stage(800),)


@pytest.mark.parametrize("meta, expected", [
    (TeacherMeta("digits", 32, 10, grayscale=True, family="digits"), "digits"),
    (TeacherMeta("cifar-resnet34", 32, 10, family="cifar10"), "cifar10"),
    (TeacherMeta("resnet50", 224, 1000, family="imagenet"), "imagenet"),
    # What a teacher is, not its name: an unknown 32 px network gets small-image defaults,
    # an unknown large one the general default.
    (TeacherMeta("my-net", 32, 10), "cifar10"),
    (TeacherMeta("digits-lookalike", 160, 10), "imagenet"),
])
def test_presets_are_chosen_from_what_the_teacher_is(meta, expected):
    assert choose_preset(PRESETS, meta).name == expected


def test_grayscale_follows_the_teacher_unless_given():
    grey = TeacherMeta("g", 32, 10, grayscale=True)
    assert configure(DIOptions(), Context(grey)).grayscale is True
    assert configure(DIOptions(grayscale=False), Context(grey)).grayscale is False
    assert configure(DIOptions(), Context(TeacherMeta("c", 32, 10))).grayscale is False


def test_configure_refuses_a_resolution_the_plan_cannot_pool():
    with pytest.raises(InvkitError, match="not divisible"):
        configure(DIOptions(setting_id=0, resolution=33), Context(TeacherMeta("t", 32, 10)))


def test_configure_takes_the_setting_plan_schedule_and_context():
    meta = TeacherMeta("t", 32, 10)
    config = configure(DIOptions(setting_id=2, plan="single-stage,iterations=50",
                                 lr_schedule="cosine"),
                       Context(meta, precision="bf16", checkpoint_every=7))
    assert (config.plan, config.betas, config.clip, config.amp, config.save_every,
            config.lr_schedule) == ((Stage(50),), (0.9, 0.999), False, "bf16", 7, "cosine")
    assert configure(DIOptions(), Context(meta)).plan == (Stage(2000, 2), Stage(1000, 1))


def test_configure_checks_memory_for_the_batch_at_its_resolution(monkeypatch):
    import invkit_plugins.deepinversion.options as di_options
    from invkit import estimate_inversion_bytes

    calls = []
    monkeypatch.setattr(di_options, "check_memory", lambda *args: calls.append(args))
    configure(DIOptions(resolution=48, setting_id=1),
              Context(TeacherMeta("t", 32, 10), batch_size=6, device="meta"))
    assert calls == [(estimate_inversion_bytes(6, 3, 48), "a batch of 6 images at 48 px", "meta")]


def test_configure_refuses_a_plan_given_as_the_learning_rate_schedule():
    with pytest.raises(InvkitError) as error:
        configure(DIOptions(lr_schedule="single-stage"), Context(TeacherMeta("t", 32, 10)))
    assert str(error.value).startswith(
        "schedule 'single-stage' is a plan schedule, not a lr one (valid: constant, cosine, ")


# ------------------------------------------------------- settings, plans, learning rate


def test_settings_match_the_spec():
    assert SETTINGS[0].plan == (Stage(2000, 2), Stage(1000, 1))
    assert SETTINGS[1].plan == (Stage(2000, 1),)
    assert SETTINGS[2].plan == (Stage(20000, 1),)
    assert SETTINGS[0].betas == SETTINGS[1].betas == (0.5, 0.9)
    assert SETTINGS[2].betas == (0.9, 0.999)
    assert SETTINGS[0].clip and SETTINGS[1].clip and not SETTINGS[2].clip
    schedules = registry("schedule")
    for setting in (0, 1, 2):
        spec = schedules.get(f"deepinversion-setting-{setting}")
        assert spec.kind == "plan" and spec.factory() == SETTINGS[setting].plan
    assert schedules.get("deepinversion-setting-0").factory(iterations=300) == (
        Stage(200, 2), Stage(100, 1))


def test_iterations_override_splits_across_stages_in_proportion():
    assert DIConfig(plan=SETTINGS[0].plan, iterations=300).stages() == (
        Stage(200, 2), Stage(100, 1))
    assert DIConfig(plan=SETTINGS[2].plan, iterations=50).stages() == (Stage(50, 1),)
    with pytest.raises(InvkitError, match="iterations 1 is too few"):
        DIConfig(plan=SETTINGS[0].plan, iterations=1)


def spec_lr(base, i, n, warmup=100):
    if i < warmup:
        return base * (i + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (i - warmup) / (n - warmup)))


@pytest.mark.parametrize("setting", [0, 1, 2])
def test_loop_follows_the_setting_plan_lr_and_fresh_adam(setting, monkeypatch):
    """Per stage: warm-up 100 + cosine; Adam re-created with the setting's betas;
    the teacher sees half resolution in the pooled stage."""
    made = []

    class SpyAdam(torch.optim.Adam):
        def __init__(self, params, **kw):
            made.append(kw)
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", SpyAdam)
    plan = DIConfig(plan=SETTINGS[setting].plan, iterations=180 if setting == 0 else 120).stages()
    s = SETTINGS[setting]
    config = DIConfig(plan=plan, lr=0.2, betas=s.betas, clip=s.clip, jitter=0, flip=False)
    teacher = tiny_teacher()
    sizes = []
    handle = teacher.module.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[-1]))
    seen = []
    try:
        DeepInversion(teacher, objective(), config=config).generate(
            [0, 1], callback=lambda cp: seen.append((cp.stage, cp.stage_iteration, cp.lr)))
    finally:
        handle.remove()
    assert len(made) == len(plan)
    assert all(kw["betas"] == s.betas and kw["eps"] == 1e-8 for kw in made)
    for stage_index, stage in enumerate(plan, start=1):
        lrs = [lr for st, _, lr in seen if st == stage_index]
        assert len(lrs) == stage.iterations
        assert lrs == pytest.approx([spec_lr(0.2, i, stage.iterations)
                                     for i in range(stage.iterations)])
    expected_sizes = [16 // st.downsample for st in plan for _ in range(st.iterations)]
    assert sizes[:len(expected_sizes)] == expected_sizes


def test_augment_pools_before_jitter_and_scales_the_jitter():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    rng = random.Random(5)
    out = augment(x, 2, 4, False, rng)
    r = random.Random(5)  # the same draws augment made
    dx, dy = r.randint(-2, 2), r.randint(-2, 2)
    pooled = torch.nn.functional.avg_pool2d(x, 2)
    assert torch.equal(out, torch.roll(pooled, shifts=(dx, dy), dims=(2, 3)))
    flips = [not torch.equal(augment(x, 1, 0, True, rng), x) for _ in range(200)]
    assert 60 < sum(flips) < 140  # about half the iterations flip


# -------------------------------------------------------------------------- the loop


def test_generate_returns_images_losses_and_predictions():
    teacher = tiny_teacher()
    before = [p.detach().clone() for p in teacher.module.parameters()]
    result = DeepInversion(teacher, objective(), config=small_config(),
                           verifier=tiny_teacher(1)).generate([0, 1, 2, 3, 0], seed=1)
    assert result.images01.shape == (5, 3, 16, 16)
    assert 0 <= result.images01.min() and result.images01.max() <= 1
    assert set(result.losses) == {"cross-entropy", "bn-stats", "tv-l2", "l2", "total",
                                  "best_total"}
    assert all(math.isfinite(v) for v in result.losses.values())
    assert result.teacher_pred.shape == (5,) and result.verifier_pred.shape == (5,)
    assert len(result.timings) == 2 and result.its_per_s > 0
    # teacher untouched: no weight gradients, weights equal, flags restored
    assert all(p.grad is None for p in teacher.module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.module.parameters()))
    assert all(p.requires_grad for p in teacher.module.parameters())
    assert not any(m._forward_hooks for m in teacher.module.modules())


def test_clipping_keeps_pixels_in_the_valid_range():
    teacher = tiny_teacher()
    result = DeepInversion(teacher, objective(), config=small_config(lr=2.0)).generate(
        [0, 1], seed=0)
    low, high = teacher.pixel_bounds(result.inputs)
    assert (result.inputs >= low - 1e-6).all() and (result.inputs <= high + 1e-6).all()


def test_best_iterate_is_the_lowest_total_of_the_final_stage():
    totals = []
    config = small_config(save_every=1)
    result = DeepInversion(tiny_teacher(), objective(), config=config).generate(
        [0, 1, 2], seed=2,
        callback=lambda cp: totals.append(cp.losses["total"]) if cp.stage == 2 else None)
    assert len(totals) == 6
    assert result.losses["best_total"] == pytest.approx(min(totals))


def test_losses_are_read_back_only_at_checkpoints():
    events = []
    DeepInversion(tiny_teacher(), objective(), config=small_config(save_every=5)).generate(
        [0, 1], callback=events.append)
    with_losses = [e.iteration for e in events if e.losses is not None]
    assert [e.iteration for e in events] == list(range(1, 13))
    assert with_losses == [5, 10, 12]
    assert all(e.inputs is not None for e in events if e.losses is not None)


def test_deterministic_on_cpu_with_a_seed():
    def run(seed):
        return DeepInversion(tiny_teacher(), objective(), config=small_config()).generate(
            [0, 1, 2], seed=seed)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.images01, b.images01)
    assert a.losses == b.losses
    assert not torch.equal(a.images01, c.images01)


def test_grayscale_optimises_one_grey_image_for_every_channel():
    # tiny-bn's channels have different means and stds: grey must be grey in pixel space.
    teacher = tiny_teacher()
    pixels = Pixels.for_teacher(teacher, grayscale=True)
    x = pixels.noise(2, 16, torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 16, 16)
    assert Pixels.for_teacher(teacher).noise(2, 16, None).shape[1] == 3
    images01 = teacher.denormalize(pixels.to_input(x))
    assert torch.allclose(images01[:, 0], images01[:, 1], atol=1e-6)
    assert torch.allclose(images01[:, 1], images01[:, 2], atol=1e-6)
    low, high = pixels.low, pixels.high
    edges = teacher.denormalize(pixels.to_input(torch.tensor([low, high]).view(2, 1, 1, 1)))
    assert torch.allclose(edges.flatten(1), torch.tensor([[0.0] * 3, [1.0] * 3]), atol=1e-6)

    result = DeepInversion(teacher, objective(), config=small_config(grayscale=True, lr=2.0),
                           verifier=tiny_teacher(1)).generate([0, 1, 2], seed=3)
    grey = result.images01
    assert grey.shape == (3, 3, 16, 16) and grey.std() > 0.01
    assert torch.allclose(grey[:, 0], grey[:, 2], atol=1e-5)  # clipped to [0, 1] grey
    colour = DeepInversion(teacher, objective(), config=small_config()).generate([0], seed=3)
    assert not torch.allclose(colour.images01[:, 0], colour.images01[:, 2], atol=1e-2)


def test_bf16_path_runs_on_cpu():
    result = DeepInversion(tiny_teacher(), objective(),
                           config=small_config(amp="bf16")).generate([0, 1], seed=0)
    assert result.images01.dtype == torch.float32 and result.inputs.dtype == torch.float32
    assert all(math.isfinite(v) for v in result.losses.values())


def test_adaptive_deepinversion_with_a_student():
    obj = objective(PRIORS + ["adi:0.2"])
    result = DeepInversion(tiny_teacher(), obj, config=small_config(),
                           student=tiny_teacher(1, name="student")).generate([0, 1], seed=0)
    assert 0 <= result.losses["adi"] <= 1


def test_adi_student_sees_its_own_input_size():
    """A student with a fixed-size head still works in a half-resolution stage."""
    from invkit.specs import Teacher, TeacherMeta

    teacher = tiny_teacher()
    size = teacher.meta.input_size
    seen = []
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size,
                                                                   teacher.meta.num_classes))
    head.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    meta = TeacherMeta("fixed", input_size=size, num_classes=teacher.meta.num_classes,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    student = Teacher(head, meta, "fixed")
    config = small_config(plan=(Stage(3, 2), Stage(2, 1)), jitter=0, flip=False)
    DeepInversion(teacher, objective(PRIORS + ["adi:0.2"]), config=config,
                  student=student).generate([0, 1], seed=0)
    assert len(seen) >= 5 and all(x.shape[-2:] == (size, size) for x in seen)


def test_bad_targets_are_one_line_errors():
    method = DeepInversion(tiny_teacher(), objective(), config=small_config())
    with pytest.raises(InvkitError, match="target 9 is out of range"):
        method.generate([0, 9])
    with pytest.raises(InvkitError, match="amp 'fp8'"):
        DIConfig(amp="fp8")


def test_fp16_scaler_and_channels_last_path_runs():
    """The CUDA code path (gradient scaler, fused Adam, channels_last), exercised on CPU."""
    config = small_config(amp="fp16", channels_last=True)
    result = DeepInversion(tiny_teacher(), objective(), config=config).generate([0, 1], seed=0)
    assert all(math.isfinite(v) for v in result.losses.values())
    assert result.inputs.dtype == torch.float32


# ------------------------------------------------------------------ --compile


def test_compile_runs_the_teacher_compiled_and_matches_eager(monkeypatch):
    compiled_modules = []
    real_compile = torch.compile

    def spy(module, **kwargs):
        compiled = real_compile(module, **kwargs)
        compiled_modules.append(compiled)
        return compiled

    monkeypatch.setattr(torch, "compile", spy)
    config = small_config(plan=(Stage(4, 1),), flip=False)
    eager = DeepInversion(tiny_teacher(), objective(), config=config).generate([0, 1, 2], seed=3)
    with_compile = DeepInversion(tiny_teacher(), objective(),
                                 config=dataclasses.replace(config, compile=True))
    calls = []
    module = with_compile.teacher.module
    module.register_forward_pre_hook(lambda m, args: calls.append(torch.compiler.is_compiling()))
    result = with_compile.generate([0, 1, 2], seed=3)
    assert len(compiled_modules) == 1
    # The trial step and the four real ones traced by the compiler (hooks included); the
    # final predictions use the module itself.
    assert calls == [True] * 5 + [False]
    assert torch.allclose(result.images01, eager.images01, atol=1e-4)
    assert result.losses["total"] == pytest.approx(eager.losses["total"], rel=1e-4)


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("InductorError: no working C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: Broken())
    config = small_config(plan=(Stage(4, 1),))
    eager = DeepInversion(tiny_teacher(), objective(), config=config).generate([0, 1], seed=2)
    with pytest.warns(RuntimeWarning) as caught:
        result = DeepInversion(tiny_teacher(), objective(),
                               config=dataclasses.replace(config, compile=True)).generate(
            [0, 1], seed=2)
    assert [str(w.message) for w in caught] == [
        "--compile: torch.compile failed (RuntimeError: InductorError: no working C++ "
        "compiler second line); running eagerly"]
    assert torch.equal(result.images01, eager.images01)


def test_compile_option_reaches_the_loop_but_not_the_run_identity():
    meta = TeacherMeta("t", 32, 10)
    compiled = configure(DIOptions(compile=True), Context(meta))
    eager = configure(DIOptions(), Context(meta))
    assert (compiled.compile, eager.compile) == (True, False)
    # --resume compares to_dict(): a run started eagerly may resume compiled.
    assert compiled.to_dict() == eager.to_dict() and "compile" not in eager.to_dict()
