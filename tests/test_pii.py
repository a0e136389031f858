"""Plug-In Inversion (``invkit run pii``): a method for teachers without BatchNorm."""

from __future__ import annotations

import json

import pytest
import torch

from invkit import build_objective, load_teacher, parse_prior
from invkit_plugins.plugin_inversion import PIIConfig, PIIOptions, PlugInInversion, configure
from invkit_plugins.plugin_inversion.method import Draw, Stage, center_mask, zoom

TINY = dict(plan=(Stage(1, 2), Stage(1, 1)), iterations=4, ensemble=2, save_every=1)


def _objective():
    return build_objective([parse_prior("cross-entropy")])


def _losses(teacher, targets, config, seed=0):
    seen = []
    result = PlugInInversion(teacher, _objective(), config=config).generate(
        targets, seed=seed, callback=lambda c: seen.append(c.losses["cross-entropy"]))
    return result, seen


def test_cli_run_on_digits_vit_writes_every_output(invoke, tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "pii", "--teacher", "digits-vit", "--iterations", "3",
                    "--ensemble", "2", "--bs", "3", "--num-batches", "2", "--verifier",
                    "--save-every", "3", "--output", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "6 images" in result.output
    for name in ("grid.png", "losses.csv", "losses.png", "manifest.jsonl", "run.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "images").rglob("*.png"))) == 6
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["method"] == "pii" and run["config"]["preset"] == "digits"
    config = run["config"]["config"]
    assert config["grayscale"] is True and config["ensemble"] == 2 and config["flip"] is False


def test_same_seed_same_images_other_seed_other_images():
    teacher = load_teacher("digits-vit")
    config = PIIConfig(grayscale=True, **TINY)
    make = lambda seed: PlugInInversion(teacher, _objective(), config=config).generate(  # noqa: E731
        [0, 7], seed=seed).images01
    first, again, other = make(3), make(3), make(4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Grey teacher: one grey image on every channel.
    assert torch.equal(first[:, 0], first[:, 1]) and torch.equal(first[:, 0], first[:, 2])


def test_the_class_score_improves_on_digits_vit():
    teacher = load_teacher("digits-vit")
    config = PIIConfig(grayscale=True, plan=(Stage(1, 1),), iterations=15, ensemble=4,
                       color_shift=0.3, zoom=0.7, flip=False, save_every=1)
    result, seen = _losses(teacher, [1, 4], config)
    assert seen[-1] < seen[0] / 2
    assert result.teacher_pred.tolist()[1] == 4


def test_centering_moves_only_the_centre_until_the_last_stage():
    teacher = load_teacher("digits-vit")
    start = PIIConfig(grayscale=True, plan=(Stage(1, 4),), iterations=1, ensemble=1)
    before = PlugInInversion(teacher, _objective(), config=PIIConfig(
        grayscale=True, plan=(Stage(1, 4),), iterations=1, ensemble=1, lr=1e-12)).generate([2])
    after = PlugInInversion(teacher, _objective(), config=start).generate([2])
    changed = (after.images01 != before.images01)[0, 0]
    assert changed[12:20, 12:20].any() and not changed.logical_and(
        center_mask(32, 4)[0, 0] == 0).any()
    assert center_mask(32, 4)[0, 0].sum().item() == 64


def test_augmentations():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # Scale 1: the image itself; scale 0.5 at the top-left corner: its 2x2 corner, zoomed.
    assert torch.allclose(zoom(x, torch.tensor([1.0]), torch.zeros(1, 2)), x, atol=1e-5)
    corner = zoom(x, torch.tensor([0.5]), torch.tensor([[-1.0, -1.0]]))
    assert corner[0, 0, 0, 0].item() == 0.0 and corner.max().item() == pytest.approx(6.25)
    draw = Draw.sample(1000, 1, PIIConfig(color_shift=0.5, zoom=0.6, flip=False),
                       torch.Generator().manual_seed(0))
    assert draw.scale.min() >= 0.6 and draw.scale.max() <= 1.0 and not draw.flip.any()
    assert draw.mu.abs().max() <= 0.5 and draw.log_sigma.abs().max() <= 0.5


def test_configure_follows_the_teacher_and_validates():
    from invkit import Context, InvkitError, TeacherMeta

    grey = Context(TeacherMeta("t", 32, 10, grayscale=True))
    config = configure(PIIOptions(iterations=40, zoom=0.8), grey)
    assert config.grayscale and config.zoom == 0.8
    assert config.stages() == (Stage(10, 4), Stage(10, 2), Stage(20, 1))
    with pytest.raises(InvkitError, match="pii-centering needs"):
        configure(PIIOptions(plan="pii-centering,stages=0"), grey)
    with pytest.raises(InvkitError, match="leaves no pixel"):
        configure(PIIOptions(plan="pii-centering,stages=7"), grey)


@pytest.mark.parametrize("flag", [["--zoom", "0"], ["--ensemble", "0"],
                                  ["--color-shift", "9"], ["--lr-schedule", "nope"]])
def test_bad_options_fail_before_any_output(invoke, tmp_path, flag):
    out = tmp_path / "never"
    result = invoke("run", "pii", "--teacher", "digits-vit", *flag, "--output", str(out))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not out.exists()


def test_vit_b_16_random_init_at_32_px_end_to_end():
    torch.manual_seed(0)
    teacher = load_teacher("vit_b_16", weights="none", input_size=32)
    # torchvision's random-init ViT has an all-zero head: every class scores the same.
    torch.nn.init.normal_(teacher.module.heads.head.weight, std=0.02)
    config = PIIConfig(iterations=4, plan=(Stage(1, 2), Stage(1, 1)), ensemble=2,
                       save_every=1)
    result, seen = _losses(teacher, [3, 999], config)
    assert result.images01.shape == (2, 3, 32, 32)
    assert len(seen) == 4 and all(torch.isfinite(torch.tensor(seen)))
    assert seen[-1] < seen[0]


def test_timm_vit_end_to_end():
    pytest.importorskip("timm", reason="timm teachers need the timm extra")
    torch.manual_seed(0)
    teacher = load_teacher("timm:vit_tiny_patch16_224", weights="none", input_size=32)
    # A random-init network barely responds: a larger step and milder augmentations.
    config = PIIConfig(iterations=4, plan=(Stage(1, 2), Stage(1, 1)), ensemble=2, lr=0.5,
                       color_shift=0.1, zoom=0.9, save_every=1)
    result, seen = _losses(teacher, [5, 6], config)
    assert result.images01.shape == (2, 3, 32, 32)
    assert len(seen) == 4 and seen[-1] < seen[0]


def test_deepinversion_refusal_names_pii(invoke, tmp_path):
    result = invoke("run", "deepinversion", "--teacher", "digits-vit",
                    "--output", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "methods that work without it: pii" in result.output
    assert not (tmp_path / "x").exists()


def test_pieces_combine_with_deepinversion_on_a_batchnorm_teacher(invoke, tmp_path):
    # The Centering plan as DeepInversion's growing-resolution plan, and bn-stats in pii.
    di = invoke("run", "deepinversion", "--teacher", "digits", "--plan",
                "pii-centering,iterations=3", "--bs", "2", "--num-batches", "1",
                "--output", str(tmp_path / "di"), "--quiet")
    assert di.exit_code == 0, di.output
    stages = json.loads((tmp_path / "di" / "run.json").read_text())["config"]["config"]["plan"]
    assert [s["downsample"] for s in stages] == [4, 2, 1]
    pii = invoke("run", "pii", "--teacher", "digits", "--prior", "bn-stats:0.05",
                 "--iterations", "3", "--ensemble", "2", "--bs", "2", "--num-batches", "1",
                 "--output", str(tmp_path / "pii"), "--quiet")
    assert pii.exit_code == 0, pii.output
    assert "bn-stats" in (tmp_path / "pii" / "losses.csv").read_text().splitlines()[0]


def test_registered_through_the_entry_point_group_and_the_builtin_fallback(tmp_path):
    import subprocess
    import sys
    from importlib import metadata

    from invkit.plugins import get_plugin_manager

    eps = {ep.name: ep.value for ep in metadata.entry_points(group="invkit")}
    assert eps["pii"] == "invkit_plugins.plugin_inversion"
    assert get_plugin_manager().get_plugin("pii") is not None
    code = ("from invkit.registry import registry;"
            "print(registry('method').get('pii').needs_batchnorm)")
    env = {"INVKIT_NO_ENTRYPOINTS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "False"


def test_presets_are_pinned_and_only_digits_adds_a_smoothness_prior(invoke):
    from invkit_plugins.plugin_inversion import PRESETS

    digits, general = PRESETS
    assert (digits.bs, digits.priors, digits.options) == (100, ("tv-l2:3e-4",), PIIOptions(
        iterations=200, lr=0.1, ensemble=8, color_shift=0.3, zoom=0.7, flip=False))
    assert (general.bs, general.priors, general.options) == (32, (), PIIOptions(
        iterations=2000, lr=0.1, ensemble=8, color_shift=1.0, zoom=0.5, flip=True))
    dry = invoke("run", "pii", "--teacher", "digits-vit", "--dry-run")
    assert "objective: 1*cross-entropy + 0.0003*tv-l2\n" in dry.output
    dry = invoke("run", "pii", "--teacher", "digits-vit", "--preset", "general", "--dry-run")
    assert "objective: 1*cross-entropy\n" in dry.output
