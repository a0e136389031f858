"""The fast generator method against DeepInversion, side by side on the bundled digits.

One run, same teacher (``digits``), same student recipe (``digits_quality.py``'s: a
``digits-verifier`` network from scratch, 40 epochs, T = 4), same real held-out digits:

1. ``invkit run fast --teacher digits --images-per-class 100 --verifier
   --save-generator OUT/generator.safetensors``: 1,000 images, generator training
   included in the wall time (the whole command, process start included);
2. ``invkit run fast --generator OUT/generator.safetensors --images-per-class 1000``:
   10,000 more images from the saved generator with no training; the cost of 10,000
   images from scratch is reported as the generator's training time (from its metadata)
   plus this run's wall time;
3. ``invkit run deepinversion --teacher digits --num-batches N`` (the shipped preset):
   DeepInversion's images; with fewer than 1,000 (``--di-images``, default 300, to spare
   a shared machine) its 1,000-image time is extrapolated from the per-image time, and
   the table says so;
4. for each image set: verifier accuracy, a fresh student distilled on it alone and
   tested on real held-out digits, and the within-class diversity (mean pairwise
   distance of the teacher's penultimate features between images of one class; the real
   held-out digits give the reference).

Usage (flags after ``--`` go to ``invkit run fast`` unchanged)::

    python benchmarks/digits_fast.py --threads 1
    python benchmarks/digits_fast.py --di-images 1000          # DI at full size
    python benchmarks/digits_fast.py -- --steps-per-batch 5    # Fast-K instead of plain

Prints one table and writes every figure to ``OUT/fast.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_quality import _acc, _pct, run_distill  # noqa: E402  (the shared recipe)

from invkit.data import load_image_dataset, load_test_data  # noqa: E402
from invkit.evaluate import evaluate_images  # noqa: E402
from invkit.output import write_json  # noqa: E402
from invkit.teachers import load_teacher  # noqa: E402
from invkit.teachers.digits import digits_dataset  # noqa: E402
from invkit_plugins.generative import feature_diversity  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/digits_fast"))
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--di-images", type=int, default=300,
                        help="DeepInversion images (a multiple of its batch of 100)")
    parser.add_argument("--skip-10k", action="store_true")
    parser.add_argument("--epochs", type=int, default=40, help="distillation epochs")
    parser.add_argument("--distill-lr", type=float, default=0.05)
    parser.add_argument("--distill-bs", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("fast_args", nargs="*", help="flags for 'invkit run fast'")
    return parser.parse_args(argv)


def invkit(args, *command: str) -> float:
    """Run ``invkit COMMAND`` in a subprocess; returns its wall time in seconds."""
    full = [sys.executable, "-m", "invkit", *command, "--quiet", "--overwrite",
            "--seed", str(args.seed)]
    print("$ invkit " + " ".join(full[3:]), flush=True)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    subprocess.run(full, check=True, env=env)
    return time.perf_counter() - started


def image_set(directory: Path, teacher, verifier, test, args) -> dict:
    images, targets = load_image_dataset([directory])
    print(f"distilling on {images.shape[0]} images of {directory.name} ...", flush=True)
    return {
        "images": int(images.shape[0]),
        "teacher_acc": evaluate_images(teacher, images, targets)["top1"],
        "verifier_acc": evaluate_images(verifier, images, targets)["top1"],
        "diversity": feature_diversity(teacher, images, targets),
        "student": run_distill(teacher, images, targets, test, args)["test_acc"],
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    generator = out / "generator.safetensors"
    f: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}

    f["fast_seconds"] = invkit(args, "run", "fast", "--teacher", "digits", "--images-per-class",
                               str(args.images_per_class), "--verifier", "--output",
                               str(out / "fast"), "--save-generator", str(generator),
                               *args.fast_args)
    f["fast_train_seconds"] = _train_seconds(generator)
    if not args.skip_10k:
        f["fast_10k_sampling_seconds"] = invkit(
            args, "run", "fast", "--teacher", "digits", "--images-per-class",
            str(10 * args.images_per_class), "--output", str(out / "fast_10k"),
            "--generator", str(generator), *args.fast_args)
        f["fast_10k_seconds"] = f["fast_train_seconds"] + f["fast_10k_sampling_seconds"]
    di_batches = max(args.di_images // 100, 1)
    f["di_seconds"] = invkit(args, "run", "deepinversion", "--teacher", "digits",
                             "--num-batches", str(di_batches), "--verifier",
                             "--output", str(out / "di"))
    f["di_images"] = 100 * di_batches
    f["di_1000_seconds"] = f["di_seconds"] * 1000 / f["di_images"]

    teacher, verifier = load_teacher("digits"), load_teacher("digits-verifier")
    test = load_test_data("digits")
    f["fast"] = image_set(out / "fast", teacher, verifier, test, args)
    f["di"] = image_set(out / "di", teacher, verifier, test, args)
    real_images, real_targets = digits_dataset("heldout")
    f["real_diversity"] = feature_diversity(teacher, real_images, real_targets)
    f["teacher_heldout"] = _acc(teacher, test)
    table = format_table(f)
    print(table)
    f["table"] = table
    write_json(out / "fast.json", f)
    return f


def _train_seconds(generator: Path) -> float:
    from safetensors import safe_open

    with safe_open(str(generator), framework="pt") as g:
        return float(json.loads(g.metadata()["info"])["train_seconds"])


def format_table(f: dict) -> str:
    fast, di, n = f["fast"], f["di"], f["di_images"]
    est = "" if n == 1000 else f" (extrapolated from {n} images)"
    rows = [
        ("images", f"{fast['images']}", f"{di['images']}"),
        ("wall time for 1,000 images", f"{f['fast_seconds']:.0f} s",
         f"{f['di_1000_seconds']:.0f} s{est}"),
        ("  of which generator training", f"{f['fast_train_seconds']:.0f} s", "-"),
        ("teacher on the images", _pct(fast["teacher_acc"]), _pct(di["teacher_acc"])),
        ("verifier on the images", _pct(fast["verifier_acc"]), _pct(di["verifier_acc"])),
        ("student distilled on them -> real held-out", _pct(fast["student"]),
         _pct(di["student"])),
        (f"within-class feature diversity (real digits {f['real_diversity']:.2f})",
         f"{fast['diversity']:.2f}", f"{di['diversity']:.2f}"),
    ]
    if "fast_10k_seconds" in f:
        rows.append(("10,000 images (training + sampling)", f"{f['fast_10k_seconds']:.0f} s",
                     f"{10 * f['di_1000_seconds']:.0f} s (extrapolated)"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'digits: fast vs DeepInversion':<{width}}  {'fast':>10}  deepinversion",
             "-" * (width + 40)]
    lines += [f"{a:<{width}}  {b:>10}  {c}" for a, b, c in rows]
    lines.append("-" * (width + 40))
    lines.append(f"fast / DI wall time for 1,000 images: "
                 f"{f['fast_seconds'] / f['di_1000_seconds']:.3f}")
    if "fast_10k_seconds" in f:
        ratio = f["fast_10k_seconds"] / f["fast_seconds"]
        lines.append(f"fast 10,000 / 1,000 images: {ratio:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
