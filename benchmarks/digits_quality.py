"""How good are DeepInversion's images? The data-free quality table on the bundled digits.

The full chain, on CPU, with the bundled digits teacher (BatchNorm ResNet, 32 px):

1. generate a class-balanced set with ``invkit run deepinversion --teacher digits``;
2. the teacher's and the independent ``digits-verifier``'s accuracy on those images;
3. a student of a different architecture (``digits-verifier``'s, from random weights)
   distilled only on the generated images, tested on the real held-out digits;
4. the same student distilled on Gaussian noise (lower bound) and on the real training
   digits (upper bound);
5. Adaptive DeepInversion: images generated in rounds against the student being
   trained (the ``adi`` competition prior), alternating with training it.

Usage (DeepInversion flags after ``--`` go to ``invkit run deepinversion`` unchanged)::

    python benchmarks/digits_quality.py
    python benchmarks/digits_quality.py --threads 1      # on a shared machine
    python benchmarks/digits_quality.py --images-per-class 100 --epochs 40 -- --iterations 600 --lr 0.1
    python benchmarks/digits_quality.py --skip-adi --out /tmp/dq

Prints one table (and writes it with every figure to ``OUT/quality.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from invkit.data import load_image_dataset, load_test_data
from invkit.distill import DistillConfig, distill, save_distilled
from invkit.evaluate import evaluate_dir, evaluate_images
from invkit.output import to_uint8, write_json
from invkit.specs import Teacher
from invkit.teachers import load_teacher
from invkit.teachers.digits import digits_dataset

TEACHER, STUDENT, VERIFIER = "digits", "digits-verifier", "digits-verifier"
# DeepInversion flags used when none follow '--': the digits preset as it ships (bs 100,
# 800 iterations at 32 px on one grey channel, bn-stats 0.05, tv-l2 3e-4), so the table
# measures the defaults.
DEFAULT_DI_ARGS = ()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/digits_quality"))
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=40, help="distillation epochs")
    parser.add_argument("--distill-lr", type=float, default=0.05)
    parser.add_argument("--distill-bs", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--adi-scale", type=float, default=0.2)
    parser.add_argument("--adi-rounds", type=int, default=10,
                        help="ADI: generate/train rounds (images split evenly across them)")
    parser.add_argument("--adi-epochs", type=int, default=4,
                        help="ADI: training epochs on the growing pool after each round")
    parser.add_argument("--skip-adi", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse OUT/di if it exists (tune distillation only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (here and in the generation subprocess); 1 avoids "
                             "oversubscription on a shared machine")
    parser.add_argument("di_args", nargs="*", help="flags for 'invkit run deepinversion'")
    return parser.parse_args(argv)


def generate(out: Path, args) -> float:
    """Run the documented command; returns its wall time in seconds."""
    command = [sys.executable, "-m", "invkit", "run", "deepinversion", "--teacher", TEACHER,
               "--images-per-class", str(args.images_per_class), "--verifier",
               "--output", str(out), "--overwrite", "--quiet", "--seed", str(args.seed),
               *args.di_args]
    print("$ invkit " + " ".join(command[3:]), flush=True)
    started = time.perf_counter()
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - started


def student_config(args) -> DistillConfig:
    # Digits are not mirror-invariant: no flips. A wider crop only where a caller asks
    # (benchmarks/digits_pii.py --distill-padding).
    return DistillConfig(epochs=args.epochs, batch_size=args.distill_bs, lr=args.distill_lr,
                         temperature=args.temperature, flip=False, seed=args.seed,
                         padding=getattr(args, "distill_padding", None))


def fresh_student(seed: int):
    torch.manual_seed(seed)
    return load_teacher(STUDENT, weights="none")


def run_distill(teacher, images, targets, test, args, out: Path | None = None) -> dict:
    result = distill(teacher, fresh_student(args.seed), images, targets,
                     config=student_config(args), test=test)
    if out is not None:
        save_distilled(result, out, teacher)
    return {"test_acc": result.final_test_acc, "seconds": result.seconds,
            "curve": [h["test_acc"] for h in result.history]}


def gaussian_noise(teacher, n: int, seed: int) -> torch.Tensor:
    """Gaussian noise in the teacher's input space, as images in [0, 1] (DI's starting point)."""
    g = torch.Generator().manual_seed(seed)
    size = teacher.meta.input_size
    return teacher.denormalize(torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)


def adaptive_chain(teacher, verifier, test, args, out: Path) -> dict:
    """ADI: rounds of (generate a class-balanced share against the current student, train it)."""
    from invkit import RunRequest, resolve_run
    from invkit_plugins.deepinversion import DeepInversion

    if args.di_args:
        raise SystemExit("the ADI rows run the shipped digits preset: drop the flags after "
                         "'--' or add --skip-adi")
    # The run the CLI would resolve for 'invkit run deepinversion --teacher digits
    # --adi-scale S' (objective and configuration), driven batch by batch here.
    resolved = resolve_run(RunRequest(method="deepinversion", teacher=TEACHER,
                                      prior_flags=(("adi_scale", args.adi_scale),)))
    bs = resolved.identity.bs
    num_classes = teacher.meta.num_classes
    per_round = args.images_per_class * num_classes // args.adi_rounds
    student = fresh_student(args.seed)
    # The competition sees the image at the student's own input size, also during a
    # half-resolution stage (a fixed-size classifier head cannot take 16 px inputs).
    rival = Teacher(module=ResizeTo(student.module, student.meta.input_size),
                    meta=student.meta, name=student.name)
    config = student_config(args)
    pool_images, pool_targets, round_acc = [], [], []
    started = time.perf_counter()
    gen_seconds = 0.0
    for r in range(args.adi_rounds):
        t0 = time.perf_counter()
        method = DeepInversion(teacher, resolved.objective, config=resolved.config,
                               student=rival)
        for first in range(0, per_round, bs):
            targets = [(first + i) % num_classes for i in range(min(bs, per_round - first))]
            result = method.generate(targets, seed=args.seed * 10_000 + r * 100 + first // bs)
            pool_images.append(to_uint8(result.images01))
            pool_targets.append(result.targets.cpu())
        gen_seconds += time.perf_counter() - t0
        images, targets = torch.cat(pool_images), torch.cat(pool_targets)
        last = r == args.adi_rounds - 1
        # Train on the pool so far; the last round gets the full schedule's remaining epochs.
        epochs = max(args.epochs - args.adi_epochs * (args.adi_rounds - 1), 1) if last \
            else args.adi_epochs
        distill(teacher, student, images, targets,
                config=dataclasses.replace(config, epochs=epochs), test=test)
        round_acc.append(_acc(student, test))
        print(f"  adi round {r + 1}/{args.adi_rounds}: {images.shape[0]} images, "
              f"student held-out {100 * round_acc[-1]:.1f}%", flush=True)
    images, targets = torch.cat(pool_images), torch.cat(pool_targets)
    from safetensors.torch import save_file

    (out / "shards").mkdir(parents=True, exist_ok=True)
    save_file({"images": images.contiguous(), "targets": targets.contiguous()},
              str(out / "shards" / "shard_00000.safetensors"))
    return {
        "images": images, "targets": targets,
        "online_student_acc": round_acc[-1], "round_acc": round_acc,
        "generate_seconds": gen_seconds, "seconds": time.perf_counter() - started,
        "teacher_acc": evaluate_images(teacher, images, targets)["top1"],
        "verifier_acc": evaluate_images(verifier, images, targets)["top1"],
    }


class ResizeTo(torch.nn.Module):
    """Run ``module`` on inputs resized to ``size`` x ``size`` (parameters shared)."""

    def __init__(self, module: torch.nn.Module, size: int):
        super().__init__()
        self.module, self.size = module, size

    def forward(self, x):
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                align_corners=False)
        return self.module(x)


def _acc(student, test) -> float:
    from invkit.distill import accuracy_on

    return accuracy_on(student, test)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.di_args = list(args.di_args or DEFAULT_DI_ARGS)
    wall = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    teacher, verifier = load_teacher(TEACHER), load_teacher(VERIFIER)
    test = load_test_data("digits")
    figures: dict = {"args": {k: (str(v) if isinstance(v, Path) else v)
                              for k, v in vars(args).items()}}

    di_dir = out / "di"
    if args.reuse and (di_dir / "images").is_dir():
        figures["generate_seconds"] = None
    else:
        figures["generate_seconds"] = generate(di_dir, args)
    images, targets = load_image_dataset([di_dir])
    figures["images"] = int(images.shape[0])
    figures["teacher_on_generated"] = evaluate_dir(di_dir, teacher, write=False)["top1"]
    figures["verifier_on_generated"] = evaluate_dir(di_dir, verifier)["top1"]
    figures["teacher_heldout"] = _acc(teacher, test)
    figures["verifier_heldout"] = _acc(verifier, test)

    print("distilling on DeepInversion images ...", flush=True)
    figures["student_di"] = run_distill(teacher, images, targets, test, args, out / "student_di")
    print(f"  teacher {_pct(figures['teacher_on_generated'])}, verifier "
          f"{_pct(figures['verifier_on_generated'])}, student {_pct(figures['student_di']['test_acc'])}",
          flush=True)
    print("distilling on Gaussian noise ...", flush=True)
    noise = gaussian_noise(teacher, images.shape[0], args.seed + 1)
    figures["student_noise"] = run_distill(teacher, noise, None, test, args)
    print("distilling on the real training digits ...", flush=True)
    real_images, real_targets = digits_dataset("train")
    figures["student_real"] = run_distill(teacher, real_images, real_targets, test, args)
    print(f"  noise {_pct(figures['student_noise']['test_acc'])}, real "
          f"{_pct(figures['student_real']['test_acc'])}", flush=True)

    # The chain the issue times (rows 1-4); ADI below is the extra comparison.
    figures["chain_seconds"] = time.perf_counter() - wall
    if not args.skip_adi:
        print(f"Adaptive DeepInversion ({args.adi_rounds} rounds, adi {args.adi_scale}) ...",
              flush=True)
        adi = adaptive_chain(teacher, verifier, test, args, out / "adi")
        figures["adi"] = {k: v for k, v in adi.items() if k not in ("images", "targets")}
        # The same fixed recipe as row 3, on the ADI images: compares the image sets alone.
        figures["adi"]["fresh_student"] = run_distill(teacher, adi["images"], adi["targets"],
                                                      test, args)
    figures["wall_seconds"] = time.perf_counter() - wall
    table = format_table(figures)
    print(table)
    figures["table"] = table
    write_json(out / "quality.json", figures)
    return figures


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:5.1f}%"


def format_table(f: dict) -> str:
    pct = _pct
    n = f["images"]
    rows = [
        ("teacher (digits) on real held-out digits", f["teacher_heldout"]),
        ("verifier (digits-verifier) on real held-out digits", f["verifier_heldout"]),
        (f"1. teacher on its {n} DeepInversion images", f["teacher_on_generated"]),
        ("2. verifier on the DeepInversion images", f["verifier_on_generated"]),
        ("3. student distilled on DI images -> held-out", f["student_di"]["test_acc"]),
        ("4a. student distilled on Gaussian noise -> held-out", f["student_noise"]["test_acc"]),
        ("4b. student distilled on real train digits -> held-out",
         f["student_real"]["test_acc"]),
    ]
    if "adi" in f:
        a = f["adi"]
        rows += [
            ("ADI: teacher on its images", a["teacher_acc"]),
            ("ADI: verifier on the images", a["verifier_acc"]),
            ("ADI: online student (trained between rounds) -> held-out",
             a["online_student_acc"]),
            ("ADI: fresh student distilled on ADI images -> held-out",
             a["fresh_student"]["test_acc"]),
        ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'digits data-free quality':<{width}}  accuracy", "-" * (width + 10)]
    lines += [f"{name:<{width}}  {pct(value)}" for name, value in rows]
    gen = f.get("generate_seconds")
    lines.append("-" * (width + 10))
    lines.append(f"DI generation {gen:.0f} s" if gen else "DI generation reused")
    lines[-1] += f", DI chain (rows 1-4) {f['chain_seconds']:.0f} s"
    if "adi" in f:
        lines[-1] += f", ADI chain {f['adi']['seconds']:.0f} s"
    lines[-1] += f", total wall {f['wall_seconds']:.0f} s"
    return "\n".join(lines)


if __name__ == "__main__":
    main()
