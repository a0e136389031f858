"""Start-up time of light commands, as whole processes (what a user waits for).

Usage: python benchmarks/bench_startup.py [--repeat N]

Prints the median wall time of ``invkit --version``, ``invkit priors list`` and
``invkit teachers list`` over N runs, and ``python -c "import torch"`` for scale.
Run it alone: other busy processes on the machine inflate every figure.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "invkit --version": ["--version"],
    "invkit priors list": ["priors", "list"],
    "invkit methods list": ["methods", "list"],
    "invkit teachers list": ["teachers", "list"],
}


def wall(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    invkit = shutil.which("invkit") or sys.executable
    prefix = [invkit] if invkit != sys.executable else [sys.executable, "-m", "invkit"]
    for label, extra in COMMANDS.items():
        print(f"{label:24s} {wall(prefix + extra, args.repeat):6.3f} s (median of {args.repeat})")
    torch = wall([sys.executable, "-c", "import torch"], args.repeat)
    print(f"{'python -c import torch':24s} {torch:6.3f} s (for scale)")


if __name__ == "__main__":
    main()
