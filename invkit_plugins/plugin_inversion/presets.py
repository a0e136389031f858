"""Plug-In Inversion's presets (defaults per kind of teacher) and its Centering plan.

Example:
    >>> [p.name for p in PRESETS]
    ['digits', 'general']
"""

from __future__ import annotations

from invkit import Preset
from invkit_plugins.plugin_inversion.options import PIIOptions

#: The paper's objective: the class score alone (no hand-tuned image prior).
DEFAULT_PRIORS = ("cross-entropy",)

PRESETS: tuple[Preset, ...] = (
    # Tuned on benchmarks/digits_pii.py --validate (see the README). Grey comes from the
    # teacher's metadata; digits are not mirror-invariant (no flips). A light total
    # variation prior (not in the paper) smooths the pixel noise: a student distilled on
    # the images did better on training-digit validation (51% against 47%, 100 images).
    Preset(
        "digits", "the bundled digits teachers (32 px, grey, offline)",
        teacher="digits-vit", families=("digits",), bs=100, verifier="digits-verifier",
        options=PIIOptions(iterations=200, lr=0.1, ensemble=8, color_shift=0.3, zoom=0.7,
                           flip=False),
        priors=("tv-l2:3e-4",),
    ),
    # Any other teacher: the paper's kind of augmentation strength.
    Preset(
        "general", "any other teacher (ViTs, MLPs, CNNs): strong augmentations, 2k steps",
        teacher="digits-vit", bs=32,
        options=PIIOptions(iterations=2000, lr=0.1, ensemble=8, color_shift=1.0, zoom=0.5,
                           flip=True),
    ),
)
