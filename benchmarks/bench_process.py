"""Whole processes: ``invkit run deepinversion`` against a faithful naive run (prints both).

Both make one batch of 16 images from a random-weight ResNet-18 at 64 px in 150
full-resolution iterations and write them as PNGs; invkit also writes its manifest,
grid, run.json and losses.csv. Start-up (importing torch, building the network) counts:
it is what a user waits for. The two alternate, best of ``--repeat``, so a busy machine
slows both alike; run it alone all the same.

    python benchmarks/bench_process.py                 # CPU, torch's default threads
    python benchmarks/bench_process.py --threads 2 --device cuda --fp16
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def commands(out: Path, args) -> dict[str, list[str]]:
    common = ["--bs", "16", "--resolution", "64", "--iterations", str(args.iterations)]
    threads = ["--threads", str(args.threads)] if args.threads else []
    invkit = [sys.executable, "-m", "invkit", "run", "deepinversion", "--teacher", "resnet18",
              "--weights", "none", "--setting-id", "1", *common, *threads,
              "--device", args.device, "--output", str(out / "invkit"), "--overwrite", "-q"]
    if args.compile:
        invkit.append("--compile")
    naive = [sys.executable, str(HERE / "naive_deepinversion.py"), *common, *threads,
             "--output", str(out / "naive")]
    return {"naive": naive, "invkit": invkit}


def wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=HERE.parent)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="add --compile to invkit's")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench_process_"))
    try:
        runs = commands(out, args)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, argv in runs.items():
                times[name].append(wall(argv))
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{args.iterations} iterations, ResNet-18 64 px batch 16 on {args.device} "
              f"(threads {args.threads or 'default'}, load {load:.2f}), best of {args.repeat}")
        for name, argv in runs.items():
            shown = " ".join(a if a != sys.executable else "python" for a in argv)
            print(f"{name:7s} {min(times[name]):7.1f} s   {shown}")
        print(f"invkit is {min(times['naive']) / min(times['invkit']):.2f}x faster as a whole "
              f"process")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
