"""A faithful naive DeepInversion run as one process: the baseline of bench_process.py.

What the published implementation does that makes it slow (see bench_step.py's
``naive_steps``): weight gradients computed, BatchNorm variance via a permuted copy, a
``loss.item()`` sync every step, plain Adam. It loads the same torchvision network with
random weights, runs ``--iterations`` steps on one batch and saves the best images as
PNGs, as the published script does.

    python benchmarks/naive_deepinversion.py --arch resnet18 --bs 16 --resolution 64 \
        --iterations 150 --output /tmp/naive
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from bench_step import bench_teacher, naive_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--bs", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = bench_teacher(args.arch, args.resolution)
    targets = torch.arange(args.bs) % teacher.meta.num_classes
    images = naive_steps(teacher.module, teacher, targets, args.resolution, args.iterations,
                         keep=True)
    args.output.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(teacher.denormalize(images).clamp(0, 1)):
        save_image(image, args.output / f"{i:03d}.png")


if __name__ == "__main__":
    main()
