"""The ``fast`` method's objective and presets (defaults per kind of teacher).

Example:
    >>> [p.name for p in PRESETS]
    ['digits', 'cifar10', 'general']
"""

from __future__ import annotations

from invkit import Preset
from invkit_plugins.generative.options import FastOptions

#: The method's objective: DeepInversion's terms on the generator's images.
DEFAULT_PRIORS = ("cross-entropy:1", "bn-stats:0.05,first_bn_multiplier=5", "tv-l2:1e-4")

PRESETS: tuple[Preset, ...] = (
    # Tuned on the digits (see the README's fast-method section): 400 steps of 64 images,
    # 1,000 images sampled. Plain training (K = 0) gave teacher 79% / verifier 60% on
    # them; Reptile with K = 5 (200 plain warm-up steps, 40 outer steps, 5 fine-tuning
    # steps per batch) 98% / 75%. Stronger bn-stats and tv-l2 than the method's default.
    Preset(
        "digits", "the bundled digits teachers (32 px, grey, offline)",
        teacher="digits", families=("digits",), bs=100, verifier="digits-verifier",
        priors=("bn-stats:0.1,first_bn_multiplier=5", "tv-l2:1e-3"),
        options=FastOptions(train_steps=400, train_bs=64, lr=2e-3, steps_per_batch=5,
                            diversity=0.0, jitter=2, flip=False),
    ),
    Preset(
        "cifar10", "CIFAR-sized teachers (<= 64 px)", teacher="cifar-resnet34",
        families=("cifar10", "cifar100"), max_input_size=64, bs=256,
        options=FastOptions(train_steps=2000, train_bs=128, width=128, jitter=2, flip=True),
    ),
    Preset(
        "general", "any other teacher: a wider generator, longer training",
        teacher="resnet50", bs=64,
        options=FastOptions(train_steps=2000, train_bs=32, width=128, z_dim=128, jitter=8,
                            flip=True),
    ),
)
