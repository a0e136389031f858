"""Plug-In Inversion on a teacher without BatchNorm: the quality table for ``digits-vit``.

1. generate a class-balanced set with ``invkit run pii --teacher digits-vit`` (the
   method's digits preset unless flags follow ``--``);
2. ``digits-vit``'s accuracy on the real held-out digits, and the independent
   ``digits-verifier``'s accuracy on the generated images;
3. a student (the ``digits-verifier`` architecture from random weights, the same
   distillation recipe as ``benchmarks/digits_quality.py``) distilled only on them,
   tested on the real held-out digits; the same on Gaussian noise (lower bound).

Usage::

    python benchmarks/digits_pii.py --seed 0                       # the README's table
    python benchmarks/digits_pii.py --seed 0 --images-per-class 10 --epochs 80 \
        --validate -- --prior tv-l2:1e-3                            # a tuning probe

Prints one table (and writes it with every figure to ``OUT/quality.json``).
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
from digits_quality import _acc, _pct, gaussian_noise, run_distill  # noqa: E402

from invkit.data import load_image_dataset, load_test_data  # noqa: E402
from invkit.evaluate import evaluate_dir  # noqa: E402
from invkit.output import write_json  # noqa: E402
from invkit.teachers import load_teacher  # noqa: E402
from invkit.teachers.digits import digits_dataset  # noqa: E402

TEACHER, VERIFIER = "digits-vit", "digits-verifier"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/digits_pii"))
    parser.add_argument("--images-per-class", type=int, default=100)
    # 200 epochs and an 8 px crop were chosen on the validation split (--validate):
    # students on the 1,000 seed-0 images reached 73.5%, 83.5% and 88.8% there after 40,
    # 100 and 200 epochs (benchmarks/digits_pii_validation_epochs.log).
    parser.add_argument("--epochs", type=int, default=200, help="distillation epochs")
    parser.add_argument("--distill-lr", type=float, default=0.05)
    parser.add_argument("--distill-bs", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads here and in the generation subprocess")
    parser.add_argument("--distill-padding", type=int, default=8,
                        help="distillation's random-crop padding in px (default 8; "
                             "digits_quality.py uses 1/8 of the size, 4 px)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse OUT/pii if it exists, and OUT/noise.json if it was "
                             "distilled with the same settings")
    parser.add_argument("--noise-only", type=int, metavar="N",
                        help="only distill the noise student on N images into "
                             "OUT/noise.json (to run beside a generation)")
    parser.add_argument("--validate", action="store_true",
                        help="test students on 400 of the TRAINING digits (a fixed random "
                             "subset) instead of the held-out split: for tuning settings")
    parser.add_argument("pii_args", nargs="*", help="flags for 'invkit run pii'")
    return parser.parse_args(argv)


def generate(out: Path, args) -> float:
    """Run the documented command; returns its wall time in seconds."""
    command = [sys.executable, "-m", "invkit", "run", "pii", "--teacher", TEACHER,
               "--images-per-class", str(args.images_per_class), "--verifier",
               "--output", str(out), "--overwrite", "--quiet", "--seed", str(args.seed),
               *args.pii_args]
    print("$ invkit " + " ".join(command[3:]), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - started


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    teacher, verifier = load_teacher(TEACHER), load_teacher(VERIFIER)
    test = validation_digits() if args.validate else load_test_data("digits")
    if args.noise_only:
        return noise_student(teacher, args.noise_only, test, args)
    figures: dict = {"args": {k: (str(v) if isinstance(v, Path) else v)
                              for k, v in vars(args).items()}}
    pii_dir = args.out / "pii"
    if not (args.reuse and (pii_dir / "images").is_dir()):
        figures["generate_seconds"] = generate(pii_dir, args)
    images, targets = load_image_dataset([pii_dir])
    figures["images"] = int(images.shape[0])
    figures["teacher_heldout"] = _acc(teacher, test)
    figures["teacher_on_generated"] = evaluate_dir(pii_dir, teacher, write=False)["top1"]
    figures["verifier_on_generated"] = evaluate_dir(pii_dir, verifier)["top1"]
    print("distilling on Plug-In Inversion images ...", flush=True)
    figures["student_pii"] = run_distill(teacher, images, targets, test, args)
    figures["student_noise"] = noise_student(teacher, images.shape[0], test, args)
    table = format_table(figures)
    print(table)
    figures["table"] = table
    write_json(args.out / "quality.json", figures)
    return figures


def noise_student(teacher, n: int, test, args) -> dict:
    """The lower-bound row: the student distilled on ``n`` Gaussian-noise images, cached
    in ``OUT/noise.json`` with what it depends on (reused with ``--reuse``)."""
    path = args.out / "noise.json"
    key = {name: getattr(args, name) for name in ("epochs", "distill_lr", "distill_bs",
                                                  "temperature", "seed", "distill_padding",
                                                  "validate")}
    key["images"] = n
    if args.reuse and path.is_file():
        cached = json.loads(path.read_text())
        if cached["key"] == key:
            print(f"reusing the noise student of {path}", flush=True)
            return cached["student_noise"]
    print("distilling on Gaussian noise ...", flush=True)
    noise = gaussian_noise(teacher, n, args.seed + 1)
    result = run_distill(teacher, noise, None, test, args)
    write_json(path, {"key": key, "student_noise": result})
    return result


def validation_digits(n: int = 400, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training digits picked at random with ``seed``: a tuning split that leaves
    the held-out digits untouched (the teacher was trained on these, so its own row reads
    high)."""
    images01, labels = digits_dataset("train")
    index = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images01[index], labels[index]


def format_table(f: dict) -> str:
    n = f["images"]
    split = "training-digit validation split" if f["args"]["validate"] else "real held-out"
    rows = [
        (f"digits-vit on {split} digits", f["teacher_heldout"]),
        (f"digits-vit on its {n} PII images", f["teacher_on_generated"]),
        (f"digits-verifier on the {n} PII images (target >= 70%)", f["verifier_on_generated"]),
        (f"student distilled on PII images, {split} (target >= 85%)",
         f["student_pii"]["test_acc"]),
        (f"student distilled on Gaussian noise, {split}", f["student_noise"]["test_acc"]),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {_pct(value)}" for name, value in rows)


if __name__ == "__main__":
    main()
