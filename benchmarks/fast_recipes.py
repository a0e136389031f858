"""Compare recipes of the ``fast`` method on the digits: plain training vs Reptile Fast-K.

Trains one generator with the given options, samples 1,000 class-balanced images (10
batches of 100) and prints the training and sampling times, the teacher's and the
independent verifier's accuracy on the images and their within-class feature diversity.
No files are written.

Usage (``key=value`` pairs are :class:`FastOptions` fields; ``priors=`` a ``;``-list)::

    python benchmarks/fast_recipes.py train_steps=400 jitter=2 lr=0.002 \\
        "priors=cross-entropy:1;bn-stats:0.1,first_bn_multiplier=5;tv-l2:1e-3"
    python benchmarks/fast_recipes.py train_steps=400 jitter=2 lr=0.002 steps_per_batch=5 \\
        "priors=cross-entropy:1;bn-stats:0.1,first_bn_multiplier=5;tv-l2:1e-3"
"""

from __future__ import annotations

import dataclasses
import sys
import time
import typing

import torch

from invkit import Context, build_objective, load_teacher, parse_prior
from invkit.evaluate import evaluate_images
from invkit_plugins.generative import (
    DEFAULT_PRIORS, FastGenerator, FastOptions, configure, feature_diversity,
)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    given = dict(a.split("=", 1) for a in argv)
    priors = given.pop("priors", ";".join(DEFAULT_PRIORS)).split(";")
    hints = typing.get_type_hints(FastOptions)
    kinds = {f.name: typing.get_args(hints[f.name])[0] for f in dataclasses.fields(FastOptions)}
    options = FastOptions(**{k: kinds[k](v) for k, v in given.items()})
    teacher, verifier = load_teacher("digits"), load_teacher("digits-verifier")
    objective = build_objective([parse_prior(p) for p in priors])
    fast = FastGenerator(teacher, objective, config=configure(options, Context(teacher.meta)))
    started = time.perf_counter()
    fast.train()
    trained = time.perf_counter() - started
    images, targets = [], []
    for batch in range(10):
        result = fast.generate([i % 10 for i in range(100)], seed=batch)
        images.append(result.images01)
        targets.append(result.targets)
    sampled = time.perf_counter() - started - trained
    images, targets = torch.cat(images), torch.cat(targets)
    print(f"{' '.join(argv)}\n  train {trained:.0f} s, sample 1,000 {sampled:.0f} s, "
          f"teacher {100 * evaluate_images(teacher, images, targets)['top1']:.1f}%, "
          f"verifier {100 * evaluate_images(verifier, images, targets)['top1']:.1f}%, "
          f"diversity {feature_diversity(teacher, images, targets):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
