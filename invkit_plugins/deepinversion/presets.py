"""DeepInversion's published settings and its presets (defaults per kind of teacher).

``SETTINGS`` are the three published ImageNet optimisation settings (resolution plan,
Adam betas, pixel clipping). ``PRESETS`` hold each kind of teacher's defaults; core picks
one from what the teacher is (its dataset family, else its input size). Tune the digits
preset here.

Example:
    >>> SETTINGS[0].plan
    (Stage(iterations=2000, downsample=2), Stage(iterations=1000, downsample=1))
    >>> [p.name for p in PRESETS]
    ['imagenet', 'cifar10', 'digits']
"""

from __future__ import annotations

from dataclasses import dataclass

from invkit import Preset, Stage
from invkit_plugins.deepinversion.options import DIOptions


@dataclass(frozen=True)
class Setting:
    """One published optimisation setting: the resolution plan, Adam betas, clipping."""

    id: int
    summary: str
    plan: tuple[Stage, ...]
    betas: tuple[float, float]
    clip: bool


SETTINGS: dict[int, Setting] = {
    0: Setting(0, "multi-resolution: 2k iterations at half resolution, then 1k at full",
               (Stage(2000, 2), Stage(1000, 1)), (0.5, 0.9), True),
    1: Setting(1, "2k iterations at full resolution", (Stage(2000, 1),), (0.5, 0.9), True),
    2: Setting(2, "20k iterations at full resolution, no clipping",
               (Stage(20000, 1),), (0.9, 0.999), False),
}

# The published hand-picked ImageNet classes; bs 84 = 2 x 42.
IMAGENET_TARGETS = (
    1, 933, 946, 980, 25, 63, 92, 94, 107, 985, 151, 154, 207, 250, 270, 277, 283,
    292, 294, 309, 311, 325, 340, 360, 386, 402, 403, 409, 530, 440, 468, 417, 590,
    670, 817, 762, 920, 949, 963, 967, 574, 487,
)

#: The method's objective: the published ImageNet coefficients.
DEFAULT_PRIORS = ("cross-entropy:1", "bn-stats:0.01,first_bn_multiplier=10", "tv-l2:0.0001",
                  "l2:1e-05")

PRESETS: tuple[Preset, ...] = (
    # The published code used torchvision's original weights (pretrained=True: V1) for
    # both the ResNet-50 teacher and the MobileNetV2 verifier.
    Preset(
        "imagenet", "the published ImageNet defaults (ResNet-50 V1 weights, 224 px, setting 0)",
        teacher="resnet50", families=("imagenet",), bs=84, targets=IMAGENET_TARGETS,
        verifier="mobilenet_v2", weights="IMAGENET1K_V1", verifier_weights="IMAGENET1K_V1",
        options=DIOptions(setting_id=0, lr=0.2, jitter=30, flip=True),
    ),
    # Also picked for any teacher of at most 64 px whose dataset is not known otherwise.
    Preset(
        "cifar10", "the published CIFAR-10 defaults; also for any other <= 64 px teacher",
        teacher="cifar-resnet34", families=("cifar10", "cifar100"), max_input_size=64,
        bs=256, priors=("bn-stats:10,first_bn_multiplier=1", "tv-l2:2.5e-5", "l2:0"),
        options=DIOptions(setting_id=1, plan="single-stage", iterations=2000, lr=0.1,
                          jitter=2, flip=True),
    ),
    # Tuned on benchmarks/digits_quality.py (see the README's quality table). The teacher
    # only ever saw grey digits, so its metadata makes the method optimise one grey image
    # (verifier 76% -> 92% on the benchmark's 1,000 images). One stage at full resolution
    # beat the multi-resolution plan; 400 iterations reach 91% and 800 94% (on 300
    # images). Digits are not flip-invariant.
    Preset(
        "digits", "the bundled digits teachers (32 px, grey, offline)",
        teacher="digits", families=("digits",), bs=100, verifier="digits-verifier",
        priors=("bn-stats:0.05,first_bn_multiplier=5", "tv-l2:3e-4", "l2:0"),
        options=DIOptions(setting_id=1, plan="single-stage", iterations=800, lr=0.1,
                          jitter=2, flip=False),
    ),
)
