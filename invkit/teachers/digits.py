"""The offline default: small networks trained on scikit-learn's handwritten digits.

scikit-learn's ``load_digits`` (1797 images, 8x8, values 0..16) is split once
(``train_test_split(test_size=0.25, random_state=0, stratify=labels)``) and shipped
inside the package as uint8 (``data/digits_splits.safetensors``), so nothing but
torch is needed at run time. Images are upscaled to 32x32 RGB at load time.

- ``digits``: a small BatchNorm ResNet (the DeepInversion teacher).
- ``digits-verifier``: a plain CNN without BatchNorm (a different architecture).
- ``digits-vit``: a small vision transformer (LayerNorm only, no BatchNorm): the
  teacher for methods that do not need BatchNorm statistics.

All three are trained by ``scripts/train_digits.py`` and shipped as safetensors with
their metadata in ``data/``.

Example:
    >>> images01, labels = digits_dataset("heldout")
    >>> images01.shape, labels[:5].tolist()
    (torch.Size([450, 3, 32, 32]), [1, 4, 8, 6, 5])
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from invkit.errors import InvkitError

DATA = Path(__file__).resolve().parent / "data"
SPLITS_FILE = DATA / "digits_splits.safetensors"
WEIGHTS = {"digits": DATA / "digits.safetensors",
           "digits-verifier": DATA / "digits-verifier.safetensors",
           "digits-vit": DATA / "digits-vit.safetensors"}
SIZE = 32
NUM_CLASSES = 10
CLASS_NAMES = tuple(str(i) for i in range(NUM_CLASSES))
# Rounded statistics of the upscaled training images (mean 0.305, std 0.324), one
# value for all three channels since the images are grey.
MEAN = (0.3, 0.3, 0.3)
STD = (0.33, 0.33, 0.33)
SPLITS = ("train", "heldout")


def upscale(images8: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """8x8 digit images (values 0..16, any dtype) as (N, 3, size, size) float in [0, 1].

    Example:
        >>> upscale(torch.full((2, 8, 8), 16, dtype=torch.uint8)).shape
        torch.Size([2, 3, 32, 32])
    """
    x = images8.to(torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()


@functools.cache
def _splits() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not SPLITS_FILE.is_file():
        raise InvkitError(f"the digits data file is missing from the installation: {SPLITS_FILE} "
                          "(reinstall invkit, or run scripts/train_digits.py in a checkout)")
    return load_file(str(SPLITS_FILE))


def digits_raw(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped split as 8x8 uint8 images (values 0..16) and int64 labels."""
    if split not in SPLITS:
        raise InvkitError(f"unknown digits split {split!r} (valid: {', '.join(SPLITS)})")
    data = _splits()
    return data[f"{split}_images"], data[f"{split}_labels"]


def digits_dataset(split: str = "heldout") -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped digits split: images (N, 3, 32, 32) float in [0, 1], labels int64 (N,).

    ``split`` is ``"train"`` (1347 images) or ``"heldout"`` (450 images).

    Example:
        >>> images01, labels = digits_dataset("train")
    """
    images8, labels = digits_raw(split)
    return upscale(images8), labels.to(torch.int64)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a residual connection (ResNet's basic block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class DigitsResNet(nn.Module):
    """A small BatchNorm ResNet for 32 px inputs: a 3x3 stem, then one basic block per
    stage, each halving the resolution (32 -> 16 -> 8 -> 4), then global pooling.

    Small on purpose (about 80k parameters): DeepInversion runs about a thousand
    iterations a minute with it on a laptop CPU.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for width in widths:
            stages.append(BasicBlock(cin, width, stride=2))
            cin = width
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DigitsCNN(nn.Module):
    """A plain CNN without BatchNorm or residuals: the digits verifier."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(inplace=True), nn.Dropout(0.25),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class ViTBlock(nn.Module):
    """A pre-norm transformer block: LayerNorm, multi-head self-attention, LayerNorm, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        # (3, n, heads, tokens, head_dim): one matmul for queries, keys and values.
        qkv = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """A small vision transformer for 32 px inputs, with no BatchNorm anywhere.

    8x8 patches (4x4 = 16 tokens; one patch covers 2x2 pixels of the original 8x8
    digit), learned position embeddings, four pre-norm blocks of width 64, then the
    mean of the tokens, a final LayerNorm and a linear head (no class token). 148,042
    parameters; 100% on the 450 held-out digits. 16 tokens make it about 4x cheaper to
    run (and invert) than 4x4 patches would (64 tokens).
    """

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, patch: int = 8,
                 num_classes: int = NUM_CLASSES, size: int = SIZE):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, (size // patch) ** 2, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = self.blocks(x)
        return self.head(self.norm(x.mean(dim=1)))


BUILDERS = {"digits": DigitsResNet, "digits-verifier": DigitsCNN, "digits-vit": DigitsViT}
SUMMARIES = {
    "digits": "small BatchNorm ResNet on scikit-learn's digits (32 px, bundled; the "
              "offline default teacher)",
    "digits-verifier": "plain CNN (no BatchNorm) on scikit-learn's digits (32 px, bundled; "
                       "the digits verifier)",
    "digits-vit": "small vision transformer (LayerNorm, no BatchNorm) on scikit-learn's "
                  "digits (32 px, bundled; for BatchNorm-free methods)",
}
#: Which digits networks have BatchNorm layers (checked against the modules by the tests).
BATCHNORM = {"digits": True, "digits-verifier": False, "digits-vit": False}


def digits_meta(name: str, weights: str):
    """The metadata of the digits networks (also stored in the shipped files)."""
    from invkit.specs import TeacherMeta

    return TeacherMeta(arch=name, input_size=SIZE, num_classes=NUM_CLASSES, mean=MEAN,
                       std=STD, class_names=CLASS_NAMES, weights=weights, grayscale=True,
                       family="digits")


def build(name: str, weights: str | None = None):
    """A digits :class:`~invkit.specs.Teacher`: the shipped weights by default, or
    ``weights="none"`` for random initialisation.

    Other weights files are loaded by :func:`invkit.teachers.load_teacher`, which
    builds the network with ``weights="none"`` first.

    Example:
        >>> build("digits").meta.num_classes
        10
    """
    from invkit.specs import Teacher
    from invkit.teachers.checkpoint import load_into, read_state_dict

    module = BUILDERS[name]()
    if weights is None or weights == "bundled":
        path = WEIGHTS[name]
        if not path.is_file():
            raise InvkitError(f"the bundled {name} weights are missing: {path} (reinstall "
                              "invkit, or run scripts/train_digits.py in a checkout)")
        load_into(module, read_state_dict(path), source=str(path), arch=name)
        weights = "bundled"
    elif weights != "none":
        raise InvkitError(f"{name} accepts --weights none or a weights file, not {weights!r}")
    return Teacher(module=module.eval(), meta=digits_meta(name, weights), name=name)


def teacher_specs():
    """The TeacherSpecs of the digits networks."""
    from invkit.specs import TeacherSpec

    for name in BUILDERS:
        yield TeacherSpec(name, SUMMARIES[name], factory=functools.partial(build, name),
                          source="bundled", input_size=SIZE, num_classes=NUM_CLASSES,
                          default_weights="bundled", grayscale=True, family="digits",
                          batchnorm=BATCHNORM[name])
