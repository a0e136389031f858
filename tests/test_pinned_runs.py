"""What a run actually does, checked against independent computations (issue 18).

Start noise from the seeded generator (the global one untouched), the best iterate
returned (reconstructed from the callback), the precision and memory format in effect
inside the teacher, the gradient scaler, atomic writes for every file a run writes,
manifest predictions recomputed from the saved PNGs, distillation's temperature and
views, and the exit codes a shell sees on SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invkit.objective import build_objective, parse_prior
from invkit.specs import Stage
from invkit_plugins.deepinversion import DeepInversion, DIConfig
from invkit.hookspecs import hookimpl
from invkit.specs import Teacher, TeacherSpec
from tests.di_tiny import CLASSES, SIZE, TinyTeachers, tiny_teacher

ROOT = Path(__file__).resolve().parents[1]
PRIORS = ("cross-entropy", "bn-stats:0.01,first_bn_multiplier=10", "tv-l2:1e-4", "l2:1e-5")


def _di(teacher=None, **config) -> DeepInversion:
    base = dict(plan=(Stage(12, 1),), lr=0.2, jitter=2, flip=True, save_every=1)
    base.update(config)
    return DeepInversion(teacher or tiny_teacher(0),
                         build_objective([parse_prior(p) for p in PRIORS]),
                         config=DIConfig(**base))


# --- start noise from the seeded generator --------------------------------------------------

def test_generate_leaves_the_global_generator_alone_and_ignores_it():
    di = _di()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = di.generate([0, 1, 2], seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from the global one
    torch.manual_seed(999)  # another global state: the same images for the same seed
    assert torch.equal(di.generate([0, 1, 2], seed=5).inputs, first.inputs)
    assert not torch.equal(di.generate([0, 1, 2], seed=6).inputs, first.inputs)


def test_test_helpers_do_not_reseed_the_global_generator():
    from tests import tiny_classifier

    state = torch.get_rng_state()
    tiny_teacher(3)
    tiny_classifier.tiny_teacher(4)
    assert torch.equal(torch.get_rng_state(), state)


# --- the best iterate, not the last ---------------------------------------------------------

def test_generate_returns_the_lowest_loss_iterate():
    seen = []
    result = _di().generate([0, 1, 2, 3], seed=3, callback=seen.append)
    # Checkpoint k reports the loss of iterate k-1 (before step k) and the iterate after
    # step k, so iterate j >= 1 is seen[j - 1].inputs and its loss is seen[j].losses.
    assert [cp.iteration for cp in seen] == list(range(1, 13))
    losses = [cp.losses["total"] for cp in seen]
    best = min(range(1, len(losses)), key=lambda j: losses[j])
    assert losses[best] <= min(losses)  # iterate 0 (the noise) is not the best here
    assert best < len(losses) - 1  # nor the last one evaluated: a middle iterate wins
    assert len({float((cp.inputs - result.inputs).abs().max()) for cp in seen}) == len(seen)
    assert torch.equal(result.inputs, seen[best - 1].inputs)
    assert result.losses["best_total"] == losses[best]
    assert not torch.equal(result.inputs, seen[-1].inputs)  # the last iterate differs
    # images01 are the same best inputs, in [0, 1].
    assert torch.equal(result.images01, tiny_teacher(0).denormalize(result.inputs).clamp(0, 1))


# --- precision, the gradient scaler and channels_last in effect ------------------------------

def _record_first_conv(teacher):
    seen = []

    def hook(module, args, output):
        seen.append((args[0].dtype, output.dtype,
                     args[0].is_contiguous(memory_format=torch.channels_last),
                     module.weight.is_contiguous(memory_format=torch.channels_last)))

    teacher.module[0].register_forward_hook(hook)
    return seen


@pytest.mark.parametrize("amp, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                        ("fp16", torch.float16)])
def test_autocast_dtype_is_in_effect_inside_the_teacher(amp, dtype):
    teacher = tiny_teacher(0)
    seen = _record_first_conv(teacher)
    _di(teacher, amp=amp, plan=(Stage(2, 1),)).generate([0, 1], seed=0)
    assert {s[1] for s in seen[:2]} == {dtype}  # the two optimisation steps


@pytest.mark.parametrize("amp, enabled", [("fp16", True), ("bf16", False), ("fp32", False)])
def test_grad_scaler_is_enabled_for_fp16_only(monkeypatch, amp, enabled):
    made = []
    real = torch.amp.GradScaler

    def spy(*args, **kwargs):
        made.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", spy)
    _di(amp=amp, plan=(Stage(1, 1),)).generate([0], seed=0)
    assert made == [(("cpu",), {"enabled": enabled})]


@pytest.mark.parametrize("channels_last", [True, False, None])
def test_channels_last_reaches_the_teacher(channels_last):
    teacher = tiny_teacher(0)
    seen = _record_first_conv(teacher)
    _di(teacher, channels_last=channels_last, plan=(Stage(2, 1),), flip=False,
        jitter=0).generate([0, 1], seed=0)
    on = channels_last is not False  # None: the default, on (CPU included)
    assert [(s[2], s[3]) for s in seen[:2]] == [(on, on), (on, on)]


def test_cli_precision_and_layout_flags_reach_the_method(invoke, register_plugin, tmp_path, monkeypatch):
    from invkit_plugins.deepinversion import method

    register_plugin(TinyTeachers(), "di-tiny-teachers")
    configs = []
    real = method.DeepInversion.__init__

    def spy(self, *args, **kwargs):
        configs.append(kwargs["config"])
        real(self, *args, **kwargs)

    monkeypatch.setattr(method.DeepInversion, "__init__", spy)
    for flag, amp in (("--bf16", "bf16"), ("--fp16", "fp16")):
        result = invoke("run", "deepinversion", "--teacher", "tiny-bn", "--iterations", "1",
                        "--bs", "2", "--num-batches", "1", "--device", "cpu", "--quiet",
                        "--preset", "imagenet", "--output", str(tmp_path / amp),
                        "--setting-id", "1", flag)
        assert result.exit_code == 0, result.output
        assert configs[-1].amp == amp
    for flags, channels_last in (((), None), (("--no-channels-last",), False),
                                 (("--channels-last",), None)):  # None: the default, on
        result = invoke("run", "deepinversion", "--teacher", "tiny-bn", "--iterations", "1",
                        "--bs", "2", "--num-batches", "1", "--device", "cpu", "--quiet",
                        "--preset", "imagenet", "--output", str(tmp_path / ("layout" + "".join(flags))),
                        "--setting-id", "1", *flags)
        assert result.exit_code == 0, result.output
        assert configs[-1].channels_last is channels_last


# --- a whole run: atomic writes and manifest predictions ------------------------------------

def linear_teacher() -> Teacher:
    """A BN teacher linear in the image means: its predictions vary from image to image
    (tiny-bn predicts one class for nearly everything, which hides per-row mistakes)."""
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, CLASSES, bias=False)).eval()
    return Teacher(module=net, meta=tiny_teacher(0).meta, name="tiny-linear")


class LinearTeacher:
    @hookimpl
    def invkit_teachers(self):
        yield TeacherSpec("tiny-linear", "BN teacher linear in the image means (tests)",
                          factory=lambda weights=None, **kwargs: linear_teacher(),
                          source="tests", input_size=SIZE, num_classes=CLASSES)


def _run(invoke, out, *extra, teacher="tiny-bn"):
    return invoke("run", "deepinversion", "--teacher", teacher, "--verifier-arch",
                  "tiny-bn-verifier", "--iterations", "6", "--save-every", "3", "--bs", "4",
                  "--num-batches", "2", "--targets", "0,1,2,3", "--device", "cpu", "--quiet",
                  "--preset", "imagenet", "--output", str(out), *extra)


@pytest.fixture
def replaced(monkeypatch):
    """Every destination ``os.replace`` writes, with its temporary file's folder."""
    moves = {}
    real = os.replace

    def spy(src, dst, *args, **kwargs):
        moves[Path(dst).resolve()] = Path(src).resolve().parent
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    return moves


def _files(root: Path) -> set[Path]:
    return {p.resolve() for p in root.rglob("*") if p.is_file()}


def test_every_file_a_run_writes_is_written_atomically(invoke, register_plugin, tmp_path,
                                                        replaced):
    register_plugin(TinyTeachers(), "di-tiny-teachers")
    out = tmp_path / "run"
    result = _run(invoke, out)
    assert result.exit_code == 0, result.output
    files = _files(out)
    assert len(files) >= 17  # 8 images, grid, manifest, run.json, losses, state...
    assert files <= set(replaced), sorted(str(f) for f in files - set(replaced))
    assert all(replaced[f] == f.parent for f in files)  # the temporary beside its target

    # eval.json, and a distilled student with its record, go through the same helper.
    from invkit.distill import DistillConfig, distill, save_distilled
    from invkit.evaluate import evaluate_dir
    from tests.tiny_classifier import random_uint8
    from tests import tiny_classifier

    evaluate_dir(out, tiny_teacher(1))
    assert (out / "eval.json").resolve() in replaced
    images, targets = random_uint8(8, seed=0)
    trained = distill(tiny_classifier.tiny_teacher(0), tiny_classifier.tiny_teacher(1),
                      images, targets, config=DistillConfig(epochs=1, batch_size=8))
    student_dir = tmp_path / "student"
    save_distilled(trained, student_dir)
    assert _files(student_dir) <= set(replaced) and len(_files(student_dir)) == 2


def _png01(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def test_manifest_predictions_equal_the_networks_on_the_saved_pngs(invoke, register_plugin,
                                                                     tmp_path):
    register_plugin(TinyTeachers(), "di-tiny-teachers")
    register_plugin(LinearTeacher(), "linear-teacher")
    out = tmp_path / "run"
    assert _run(invoke, out, teacher="tiny-linear").exit_code == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    images = torch.stack([_png01(out / row["file"]) for row in rows])
    teacher = linear_teacher()
    verifier = tiny_teacher(1, "tiny-bn-verifier")
    with torch.no_grad():
        teacher_probs = teacher.module(teacher.prepare(images)).softmax(1)
        verifier_pred = verifier.module(verifier.prepare(images)).argmax(1).tolist()
    conf, teacher_pred = teacher_probs.max(1)
    assert [r["teacher_pred"] for r in rows] == teacher_pred.tolist()
    assert len(set(teacher_pred.tolist())) > 2  # per-row values, not one class for all
    assert [r["verifier_pred"] for r in rows] == verifier_pred
    for row, c in zip(rows, conf.tolist()):
        assert row["teacher_conf"] == pytest.approx(c, abs=5e-3)  # PNG rounding only
    # The two networks disagree on these images: a verifier replaced by the teacher shows.
    assert verifier_pred != teacher_pred.tolist()
    run = json.loads((out / "run.json").read_text())
    verified = sum(p == r["target"] for p, r in zip(verifier_pred, rows)) / len(rows)
    assert run["verifier_accuracy"] == verified
    assert [r["target"] for r in rows] == [0, 1, 2, 3] * 2 and CLASSES == 4


# --- distillation: the configured temperature and one view for both networks -----------------

def test_distill_uses_the_temperature_and_shows_both_networks_the_same_view(monkeypatch):
    import invkit.distill as distill_module
    from tests import tiny_classifier

    teacher = tiny_classifier.tiny_teacher(0)
    student = tiny_classifier.tiny_teacher(1, arch="tiny-student")
    assert teacher.meta.mean == student.meta.mean and teacher.meta.std == student.meta.std
    views = {"teacher": [], "student": []}
    teacher.module.register_forward_pre_hook(lambda m, a: views["teacher"].append(a[0].clone()))
    student.module.register_forward_pre_hook(lambda m, a: views["student"].append(a[0].clone()))
    temperatures = []
    real = distill_module.kd_loss

    def spy(student_logits, teacher_logits, temperature):
        temperatures.append(temperature)
        return real(student_logits, teacher_logits, temperature)

    monkeypatch.setattr(distill_module, "kd_loss", spy)
    images, targets = tiny_classifier.random_uint8(24, seed=3)
    config = distill_module.DistillConfig(epochs=2, batch_size=8, temperature=2.5, padding=2,
                                          flip=True, seed=1)
    distill_module.distill(teacher, student, images, targets, config=config)
    assert temperatures == [2.5] * 6
    assert len(views["teacher"]) == len(views["student"]) == 6
    for t, s in zip(views["teacher"], views["student"]):
        assert torch.equal(t, s)
    # The views are augmented (cropped/flipped), not the raw images.
    raw = teacher.normalize(images.float() / 255)
    assert not any(torch.equal(v, raw[:8]) for v in views["teacher"])


# --- exit codes a shell sees ---------------------------------------------------------------------

@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_exits_128_plus_the_signal(tmp_path, signum, code):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", INVKIT_OFFLINE="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "invkit", "run", "deepinversion", "--teacher", "digits",
         "--bs", "2", "--num-batches", "3", "--iterations", "60", "--save-every", "30",
         "--device", "cpu", "--quiet", "--output", str(out)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "state").exists() and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert "--resume" in stderr and "Traceback" not in stderr
