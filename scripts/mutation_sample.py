"""A seeded random sample of mutmut's mutants over every mutated module, and its score.

Running all of them (about 15,700 over ``invkit/`` and ``invkit_plugins/``) takes many
hours on a small machine, so the score is estimated from a uniform random sample, with a
95% interval. Run from the repository root after ``mutmut run`` has generated the
mutants and its test statistics (README, Development)::

    OMP_NUM_THREADS=1 mutmut run --max-children 2 $(python scripts/mutation_sample.py 700)
    python scripts/mutation_sample.py --report

The sample (names) is written to ``mutants/sample.txt``; ``--report`` reads it back with
the results mutmut stored in ``mutants/**/*.meta``.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
from pathlib import Path

MUTANTS = Path("mutants")
SAMPLE = MUTANTS / "sample.txt"


def all_mutants() -> dict[str, tuple[str, int | None]]:
    """Every mutant's name -> (source file, mutmut's exit code or None if not run)."""
    found = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        source = meta.relative_to(MUTANTS).as_posix()[: -len(".meta")]
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = (source, code)
    return found


def report() -> None:
    from mutmut.stats import status_by_exit_code

    mutants = all_mutants()
    names = [name for name in SAMPLE.read_text().split() if name in mutants]
    statuses = collections.Counter()
    by_file: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name in names:
        source, code = mutants[name]
        statuses[status_by_exit_code[code]] += 1
        by_file[source][status_by_exit_code[code]] += 1
    checked = len(names) - statuses["not checked"]
    killed = statuses["killed"]
    print(f"{len(names)} sampled of {len(mutants)} mutants: " +
          ", ".join(f"{n} {status}" for status, n in statuses.most_common()))
    if checked:
        p = killed / checked
        half = 1.96 * math.sqrt(p * (1 - p) / checked)
        print(f"killed: {killed}/{checked} = {100 * p:.1f}% "
              f"(95% interval {100 * (p - half):.1f}-{100 * (p + half):.1f}%)")
    for source, counts in sorted(by_file.items()):
        print(f"  {source}: " + ", ".join(f"{n} {s}" for s, n in counts.most_common()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", nargs="?", type=int, default=700)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--report", action="store_true", help="score the last sample")
    args = parser.parse_args()
    if args.report:
        report()
        return
    names = sorted(all_mutants())
    random.Random(args.seed).shuffle(names)
    sample = names[: args.size]
    SAMPLE.write_text("\n".join(sample) + "\n")
    print(" ".join(sample))


if __name__ == "__main__":
    main()
