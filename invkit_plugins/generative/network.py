"""The conditional generator G(z, y) and its safetensors file.

A small upsampling network sized to the teacher's input: the latent ``z`` is multiplied
by a learned embedding of the label ``y`` (a conditional generator whose class enters
every unit), projected to a ``width``-channel map at a quarter of the image size, then
twice (nearest upsampling, 3x3 conv halving the channels, BatchNorm, LeakyReLU), and a
final 3x3 conv with a sigmoid gives pixels in [0, 1]. One output channel for grey
teachers (repeated to the teacher's channels), three otherwise. The network has its own
BatchNorm layers; they are in training mode while the generator learns and in evaluation
mode (running statistics) when sampling, so an image depends only on its own ``z`` and
label, never on its batch.

Example:
    >>> spec = GeneratorSpec(z_dim=64, width=64, size=32, channels=1, num_classes=10)
    >>> net = ConditionalGenerator(spec)
    >>> net(torch.randn(4, 64), torch.tensor([0, 1, 2, 3])).shape
    torch.Size([4, 1, 32, 32])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from invkit import InvkitError, atomic_write_bytes

FORMAT = "invkit-generator/1"


@dataclass(frozen=True)
class GeneratorSpec:
    """The generator's shape: what a saved generator must agree with to be loaded."""

    z_dim: int
    width: int
    size: int          # the teacher's input size
    channels: int      # 1 (grey, repeated) or 3
    num_classes: int

    @property
    def base(self) -> int:
        """The side of the first feature map: a quarter of the image, rounded up."""
        return -(-self.size // 4)


class ConditionalGenerator(nn.Module):
    """G(z, y) -> images in [0, 1], shape (N, channels, size, size)."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.spec = spec
        w, b = spec.width, spec.base
        self.embed = nn.Embedding(spec.num_classes, spec.z_dim)
        self.project = nn.Linear(spec.z_dim, w * b * b)
        self.bn0 = nn.BatchNorm2d(w)
        # Channels halve as the map doubles: the cost per resolution stays flat, and the
        # generator stays cheaper than the teacher it is trained against.
        self.up1 = nn.Sequential(nn.Conv2d(w, w // 2, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(w // 2), nn.LeakyReLU(0.2))
        self.up2 = nn.Sequential(nn.Conv2d(w // 2, w // 4, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(w // 4), nn.LeakyReLU(0.2))
        self.out = nn.Conv2d(w // 4, spec.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        h = self.project(z * self.embed(y)).view(-1, spec.width, spec.base, spec.base)
        h = self.up1(F.interpolate(self.bn0(h), scale_factor=2, mode="nearest"))
        h = self.up2(F.interpolate(h, scale_factor=2, mode="nearest"))
        if h.shape[-1] != spec.size:  # sizes not divisible by 4
            h = F.interpolate(h, size=(spec.size, spec.size), mode="bilinear",
                              align_corners=False)
        return torch.sigmoid(self.out(h))


def latents(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """Standard normal latents from a seeded CPU generator: the same on every device."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(int(seed)))


def save_generator(net: ConditionalGenerator, path: str | Path, *, teacher: str,
                   extra: dict | None = None) -> Path:
    """Write ``net`` as safetensors (atomically) with its shape and provenance as metadata.

    Example:
        >>> net = ConditionalGenerator(GeneratorSpec(z_dim=8, width=4, size=32, channels=1,
        ...                                          num_classes=10))
        >>> save_generator(net, "generator.safetensors", teacher="digits")
        PosixPath('generator.safetensors')
    """
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    metadata = {"format": FORMAT, "spec": json.dumps(dataclasses.asdict(net.spec)),
                "teacher": teacher, "info": json.dumps(extra or {})}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def read_spec(path: str | Path) -> tuple[GeneratorSpec, dict]:
    """The spec and metadata of a saved generator, reading only the file's header."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InvkitError(f"--generator {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:  # noqa: BLE001 - any unreadable file is one clear line
        raise InvkitError(f"--generator {path}: not a safetensors file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise InvkitError(f"--generator {path}: not an invkit generator (metadata format "
                          f"{metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        spec = GeneratorSpec(**json.loads(metadata["spec"]))
    except (KeyError, TypeError, ValueError) as error:
        raise InvkitError(f"--generator {path}: bad generator metadata ({error})") from None
    return spec, metadata


def load_generator(path: str | Path) -> ConditionalGenerator:
    """A saved generator, loaded without unpickling (safetensors)."""
    from safetensors.torch import load_file

    spec, _ = read_spec(path)
    net = ConditionalGenerator(spec)
    try:
        net.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        raise InvkitError(f"--generator {path}: weights do not match its metadata "
                          f"({str(error).splitlines()[0]})") from None
    return net


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256: a run sampled from a generator file is identified by it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
