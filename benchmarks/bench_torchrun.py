"""Images/s of DeepInversion dataset generation with 1 process vs 2 under torchrun (CPU, gloo).

Runs the real command twice on the bundled `digits` teacher (small BN ResNet, 32 px)::

    torchrun --standalone --nproc-per-node K -m invkit run deepinversion --teacher digits \
        --num-batches B --bs S --iterations N --device cpu --quiet --overwrite --output DIR

with one thread per process (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1) so the scaling
measured is that of processes, not of intra-op threads. The figure is
run.json's ``last_session.images_per_s``: images written / wall time of the
generation (rank 0, from the start barrier to the end barrier; model loading and
process start-up excluded). It also checks that both runs wrote the same images.

Usage: python benchmarks/bench_torchrun.py [--batches 4] [--bs 16] [--iterations 60] [--repeat 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(nproc: int, out: Path, args) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "invkit", "run", "deepinversion",
               "--teacher", args.teacher, *(["--weights", args.weights] if args.weights else []),
               "--num-batches", str(args.batches), "--bs", str(args.bs),
               "--iterations", str(args.iterations), "--device", "cpu", "--quiet", "--overwrite",
               "--save-every", str(10**6), "--output", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{nproc} process(es) failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads((out / "run.json").read_text())


def image_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((out / "images").rglob("*.png")):
        digest.update(path.relative_to(out).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def bundled_digits() -> bool:
    from invkit.teachers import digits

    return digits.WEIGHTS["digits"].is_file()


def random_digits(path: Path) -> str:
    import torch

    from invkit.teachers import load_teacher

    torch.manual_seed(0)
    torch.save(load_teacher("digits", weights="none").module.state_dict(), path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="digits")
    parser.add_argument("--weights", default=None,
                        help="weights file (default: the bundled ones; if missing, seeded random "
                             "weights: the speed does not depend on their values)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--bs", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=1, help="runs per process count (best kept)")
    args = parser.parse_args()
    print(f"CPU cores: {os.cpu_count()}; load average before: {load()} (1, 5, 15 min)")
    print(f"teacher={args.teacher} batches={args.batches} bs={args.bs} "
          f"iterations={args.iterations}; 1 thread per process")
    with tempfile.TemporaryDirectory() as tmp:
        if args.weights is None and args.teacher == "digits" and not bundled_digits():
            args.weights = random_digits(Path(tmp) / "digits.pt")
            print("bundled digits weights missing: using seeded random weights (same speed)")
        rates, digests = {}, {}
        for repeat in range(args.repeat):
            for nproc in (1, 2):  # interleaved, so a change in machine load hits both
                out = Path(tmp) / f"np{nproc}"
                session = run(nproc, out, args)["last_session"]
                rates[nproc] = max(rates.get(nproc, 0.0), session["images_per_s"])
                digests[nproc] = image_digest(out)
                print(f"{nproc} process(es): {session['images']} images in "
                      f"{session['wall_seconds']:.1f} s = {session['images_per_s']:.3f} images/s")
        if args.repeat > 1:
            print(f"best of {args.repeat}: 1 process {rates[1]:.3f}, 2 processes {rates[2]:.3f} images/s")
    print(f"speed-up 2 vs 1 processes: {rates[2] / rates[1]:.2f}x")
    print(f"same images from 1 and 2 processes: {'yes' if digests[1] == digests[2] else 'NO'}")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
