"""Data-free continual learning on the bundled digits: add classes 5-9 to a 0-4 network.

1. A teacher is trained on the real training digits of classes 0-4 only (the digits
   teacher's architecture, a small BatchNorm ResNet, with a 5-class head; the recipe of
   ``scripts/train_digits.py``: AdamW, one-cycle, 40 epochs, 2 px shifts).
2. 1,000 replay images of 0-4 (200 per class) are generated from it alone with
   ``invkit run deepinversion --teacher checkpoint:<teacher> --preset digits
   --images-per-class 200`` (no verifier: ``digits-verifier`` has 10 classes).
3. It is extended with the real training images of 5-9 by ``invkit extend``, three ways:
   plain fine-tuning (``--no-distill``), LwF (``--replay none``) and DeepInversion
   replay (``--replay <images>``, plus ``--replay-flags``: none by default, e.g.
   ``ABD_FLAGS`` for Always Be Dreaming's head-only cross-entropy).
4. Upper bound: the same architecture trained jointly on the real 0-9 training digits.

Every network is tested on the real held-out digits (450 images no network trained on):
accuracy on the old classes (0-4), the new ones (5-9) and all ten.

``--validation`` is for choosing settings without the held-out split: 20% of each
class's *training* images (split by ``--seed``) become the test set, and the networks
are extended with the other 80% of 5-9 (the same teacher and replay images: the teacher
has seen the old validation images, no extended network has). No joint training there.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/digits_extend.py --seed 0          # the README's table
    OMP_NUM_THREADS=1 python benchmarks/digits_extend.py --seed 0 --iterations 400 \
        --replay-dir OUT/seed0/replay400 --modes replay        # faster replay images
    python benchmarks/digits_extend.py --seed 0 --epochs 20 -- --lr 0.01   # flags after --
                                                                            # go to 'invkit extend'
    python benchmarks/digits_extend.py --seed 0 --validation --modes replay -- --align-head

The teacher (``OUT/seed<S>/teacher04.safetensors``) and the replay images
(``--replay-dir``, default ``OUT/seed<S>/replay``) are reused when they exist (generation
takes minutes on a CPU); ``--fresh`` redoes both. Prints a table and writes every figure
to ``OUT/seed<S>/extend_benchmark.json`` (``validation_benchmark.json`` with
``--validation``); the extended networks go to ``OUT/seed<S>/extended/<mode>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from invkit.distill import augment
from invkit.output import to_uint8, write_json
from invkit.specs import Teacher
from invkit.teachers import load_teacher, save_teacher
from invkit.teachers import digits as D

OLD = tuple(range(5))
NEW = tuple(range(5, 10))
# Extra 'invkit extend' flags of the replay row: none, the paper's loss. Always Be
# Dreaming's head-only cross-entropy ABD_FLAGS won on the validation split with the
# 400-iteration images and tied with the paper's loss with the preset's 800 (README).
REPLAY_FLAGS = ""
ABD_FLAGS = ("--new-ce new --replay-softmax old --head-ce-weight 1 --replay-weight 3 "
             "--lwf-weight 0")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/digits_extend"))
    parser.add_argument("--replay-dir", type=Path, default=None,
                        help="replay images to use (generated there if missing) "
                             "[default: OUT/seed<S>/replay]")
    parser.add_argument("--images-per-class", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=None,
                        help="DeepInversion iterations [default: the digits preset's 800]")
    parser.add_argument("--epochs", type=int, default=12, help="'invkit extend' epochs")
    parser.add_argument("--teacher-epochs", type=int, default=40)
    parser.add_argument("--fresh", action="store_true",
                        help="retrain the teacher and regenerate the replay images")
    parser.add_argument("--validation", action="store_true",
                        help="test on 20%% of the training images instead of the held-out "
                             "split (for choosing settings)")
    parser.add_argument("--modes", default="finetune,lwf,replay,joint",
                        help="comma-separated rows to run: finetune, lwf, replay, joint "
                             "(joint training, not with --validation)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads here and in the subprocesses")
    parser.add_argument("--replay-flags", default=REPLAY_FLAGS,
                        help="flags for 'invkit extend' in the replay mode only "
                             f"[default: none; e.g. {ABD_FLAGS!r}]")
    parser.add_argument("extend_args", nargs="*",
                        help="extra flags for 'invkit extend' (every mode)")
    return parser.parse_args(argv)


def train_classifier(num_classes: int, images01: torch.Tensor, labels: torch.Tensor, *,
                     epochs: int, seed: int, batch_size: int = 64, lr: float = 3e-3) -> Teacher:
    """The digits teacher's network and recipe (scripts/train_digits.py), ``num_classes`` wide."""
    torch.manual_seed(seed)
    module = D.DigitsResNet(num_classes=num_classes)
    meta = dataclasses.replace(D.digits_meta("digits", "none"), num_classes=num_classes,
                               class_names=D.CLASS_NAMES[:num_classes])
    teacher = Teacher(module=module, meta=meta, name=f"digits-{num_classes}")
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * -(-len(labels) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps,
                                                   pct_start=0.15)
    for _ in range(epochs):
        module.train()
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            x = augment(images01[index], padding=2, flip=False, generator=generator)
            loss = F.cross_entropy(module(teacher.normalize(x)), labels[index],
                                   label_smoothing=0.05)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    module.eval()
    return teacher


@torch.no_grad()
def split_acc(network: Teacher, images01: torch.Tensor, labels: torch.Tensor) -> dict:
    pred = network.module.eval()(network.normalize(images01)).argmax(1)
    hit = pred == labels
    old = labels < len(OLD)
    return {"all": hit.float().mean().item(), "old": hit[old].float().mean().item(),
            "new": hit[~old].float().mean().item() if (~old).any() else None}


def write_new_classes(root: Path, images01: torch.Tensor, labels: torch.Tensor) -> Path:
    """The real training images of 5-9 as an ImageFolder (``5/``, ..., ``9/``)."""
    from invkit.output import save_png

    if root.exists():
        shutil.rmtree(root)
    for i, (image, label) in enumerate(zip(images01, labels.tolist())):
        if label in NEW:
            save_png(root / str(label) / f"{i:04d}.png", image)
    return root


def validation_split(labels: torch.Tensor, seed: int, share: float = 0.2) -> torch.Tensor:
    """A mask of ``share`` of each class's images (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        index = (labels == c).nonzero().flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        mask[index[:int(len(index) * share)]] = True
    return mask


def write_test_folder(root: Path, images01: torch.Tensor, labels: torch.Tensor) -> Path:
    """Validation images of every digit as an ImageFolder (``0/``, ..., ``9/``)."""
    from invkit.output import save_png

    if root.exists():
        shutil.rmtree(root)
    for i, (image, label) in enumerate(zip(images01, labels.tolist())):
        save_png(root / str(label) / f"{i:04d}.png", image)
    return root


def run(command: list[str], threads: int) -> float:
    print("$ " + " ".join(["invkit", *command[3:]]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - started


def generate(teacher_path: Path, out: Path, args) -> float:
    command = [sys.executable, "-m", "invkit", "run", "deepinversion",
               "--teacher", f"checkpoint:{teacher_path}", "--preset", "digits",
               "--images-per-class", str(args.images_per_class), "--seed", str(args.seed),
               "--output", str(out), "--overwrite", "--quiet"]
    if args.iterations:
        command += ["--iterations", str(args.iterations)]
    return run(command, args.threads)


def extend(mode: str, teacher_path: Path, new_dir: Path, replay: Path | None, out: Path,
           test: str, args) -> dict:
    flags = {"finetune": ["--no-distill"], "lwf": ["--replay", "none"],
             "replay": ["--replay", str(replay), *args.replay_flags.split()]}[mode]
    command = [sys.executable, "-m", "invkit", "extend",
               "--teacher", f"checkpoint:{teacher_path}", "--new-data", str(new_dir), *flags,
               "--epochs", str(args.epochs), "--test-data", test, "--seed", str(args.seed),
               "-o", str(out), "--overwrite", "--quiet", *args.extend_args]
    seconds = run(command, args.threads)
    record = json.loads((out / "extend.json").read_text())
    final = record["final"]
    figures = {"all": final["test_acc"], "old": final["test_acc_old"],
               "new": final["test_acc_new"], "seconds": seconds,
               "command": "invkit " + " ".join(command[3:]),
               "curve_old": [e["test_acc_old"] for e in record["epochs"]],
               "curve_new": [e["test_acc_new"] for e in record["epochs"]]}
    if record.get("alignment"):
        figures["alignment"] = record["alignment"]
    return figures


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out = args.out / f"seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    replay_dir = args.replay_dir or out / "replay"
    train_x, train_y = D.digits_dataset("train")
    held_x, held_y = D.digits_dataset("heldout")
    old_mask = train_y < len(OLD)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"finetune", "lwf", "replay", "joint"}:
        raise SystemExit(f"--modes: {args.modes!r} (choose among finetune, lwf, replay, joint)")
    figures: dict = {"seed": args.seed, "epochs": args.epochs, "validation": args.validation,
                     "extend_args": args.extend_args, "replay_flags": args.replay_flags,
                     "train_images": {"old": int(old_mask.sum()), "new": int((~old_mask).sum())}}
    wall = time.perf_counter()

    teacher_path = out / "teacher04.safetensors"
    if args.fresh or not teacher_path.exists():
        started = time.perf_counter()
        teacher = train_classifier(len(OLD), train_x[old_mask], train_y[old_mask],
                                   epochs=args.teacher_epochs, seed=args.seed)
        save_teacher(teacher, teacher_path, extra={"trained_by": "benchmarks/digits_extend.py",
                                                   "classes": "0-4", "seed": str(args.seed)})
        figures["teacher_seconds"] = time.perf_counter() - started
        print(f"teacher (0-4) trained in {figures['teacher_seconds']:.0f} s", flush=True)
    else:
        print(f"reusing the teacher {teacher_path}", flush=True)
    teacher = load_teacher(f"checkpoint:{teacher_path}")
    held_old = held_y < len(OLD)
    figures["teacher"] = split_acc(teacher, held_x[held_old], held_y[held_old])

    if args.fresh or not (replay_dir / "run.json").exists():
        figures["generate_seconds"] = generate(teacher_path, replay_dir, args)
    else:
        print(f"reusing the replay images in {replay_dir}", flush=True)
    figures["replay_images"] = sum(1 for p in (replay_dir / "images").rglob("*.png"))
    if args.validation:
        val = validation_split(train_y, args.seed)
        work = out / "validation"
        new_dir = write_new_classes(work / "new59", train_x[~val], train_y[~val])
        test = str(write_test_folder(work / "test", train_x[val], train_y[val]))
        figures["validation_images"] = {"old": int((val & old_mask).sum()),
                                        "new": int((val & ~old_mask).sum())}
        figures["train_images"]["new"] = int((~val & ~old_mask).sum())
        figures["teacher"] = split_acc(teacher, train_x[val & old_mask], train_y[val & old_mask])
    else:
        work, test = out, "digits"
        new_dir = write_new_classes(out / "new59", train_x, train_y)

    for mode in (m for m in modes if m != "joint"):
        figures[mode] = extend(mode, teacher_path, new_dir, replay_dir,
                               work / "extended" / mode, test, args)
    if "joint" in modes and not args.validation:
        started = time.perf_counter()
        joint = train_classifier(10, train_x, train_y, epochs=args.teacher_epochs,
                                 seed=args.seed)
        figures["joint"] = {**split_acc(joint, held_x, held_y),
                            "seconds": time.perf_counter() - started}
    figures["wall_seconds"] = time.perf_counter() - wall
    write_json(out / ("validation_benchmark.json" if args.validation
                      else "extend_benchmark.json"), figures)
    print_table(figures)
    return figures


def print_table(f: dict) -> None:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    labels = {"finetune": "plain fine-tuning (--no-distill)", "lwf": "LwF (--replay none)",
              "replay": f"DeepInversion replay ({f['replay_images']:,} images)",
              "joint": "joint training on real 0-9 (upper bound)"}
    rows = [("teacher trained on 0-4 (before)", f["teacher"]["old"], None, None)]
    rows += [(label, f[key]["old"], f[key]["new"], f[key]["all"])
             for key, label in labels.items() if key in f]
    where = ("validation split of the training digits" if f["validation"]
             else "held-out digits")
    print(f"\nseed {f['seed']}, {where}: old = 0-4, new = 5-9; "
          f"'invkit extend' flags: --epochs {f['epochs']} {' '.join(f['extend_args'])}, "
          f"replay: {f['replay_flags']}")
    print(f"| {'':42s} | old (0-4) | new (5-9) | all |")
    print("|---|---|---|---|")
    for name, old, new, all_ in rows:
        print(f"| {name:42s} | {pct(old)} | {pct(new)} | {pct(all_)} |")
    print(f"whole run {f['wall_seconds']:.0f} s"
          + (f", generation {f['generate_seconds']:.0f} s" if "generate_seconds" in f else ""))


if __name__ == "__main__":
    main()
