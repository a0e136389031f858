"""Train the bundled digits networks and write them (and the data split) into the package.

Deterministic: a fixed split, fixed seeds, one thread, deterministic algorithms; running
it twice gives the same accuracies. Needs scikit-learn (``pip install invkit[train]``)
for ``load_digits``; nothing else at run time does.

Usage:
    python scripts/train_digits.py              # writes invkit/teachers/data/*.safetensors
    python scripts/train_digits.py --epochs 5 --out /tmp/digits   # a quick try elsewhere
    python scripts/train_digits.py --networks digits-vit         # one network only

It prints the held-out accuracy of each network and fails if one is below 97%.
Each network trains with its own seed (its position in ``digits.BUILDERS``) and
settings (``TRAINING``), so training one alone gives the same weights as training all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from invkit.output import atomic_write_bytes
from invkit.specs import Teacher
from invkit.teachers import save_teacher
from invkit.teachers import digits as D

MIN_ACCURACY = 0.97


class Training(NamedTuple):
    """How one network trains (``--epochs N`` overrides ``epochs`` for a quick try).

    A NamedTuple, not a dataclass: the tests load this script as a file, outside
    ``sys.modules``, where dataclasses cannot resolve their annotations.
    """

    epochs: int = 40
    lr: float = 3e-3
    weight_decay: float = 5e-4


# The convolutional networks' settings are the ones they shipped with. The transformer
# (no convolutional inductive bias) needs more epochs and stronger weight decay.
TRAINING = {"digits": Training(), "digits-verifier": Training(),
            "digits-vit": Training(epochs=100, lr=2e-3, weight_decay=0.05)}


def make_splits() -> dict[str, torch.Tensor]:
    """scikit-learn's digits, split 75/25, stratified, ``random_state=0``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.rint(data.images).astype(np.uint8)  # values 0..16
    labels = data.target.astype(np.int64)
    train, heldout = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=0,
                                      stratify=labels)
    train, heldout = np.sort(train), np.sort(heldout)
    return {
        "train_images": torch.from_numpy(images[train].copy()),
        "train_labels": torch.from_numpy(labels[train].copy()),
        "heldout_images": torch.from_numpy(images[heldout].copy()),
        "heldout_labels": torch.from_numpy(labels[heldout].copy()),
    }


def _same_splits(path: Path, splits: dict[str, torch.Tensor]) -> bool:
    """Whether ``path`` already holds these splits (then it is left as it is: the
    metadata's key order varies between runs, so rewriting would change the bytes)."""
    from safetensors.torch import load_file

    if not path.is_file():
        return False
    old = load_file(str(path))
    return old.keys() == splits.keys() and all(torch.equal(old[k], splits[k]) for k in old)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels on both axes (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


@torch.no_grad()
def accuracy(teacher: Teacher, images01: torch.Tensor, labels: torch.Tensor) -> float:
    teacher.module.eval()
    logits = teacher.module(teacher.normalize(images01))
    return (logits.argmax(1) == labels).float().mean().item()


def train(name: str, images01, labels, *, epochs: int, seed: int, batch_size: int = 64,
          lr: float = 3e-3, weight_decay: float = 5e-4) -> Teacher:
    torch.manual_seed(seed)
    teacher = D.build(name, weights="none")
    module = teacher.module
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(labels) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps,
                                                   pct_start=0.15)
    for epoch in range(epochs):
        module.train()
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            x = random_shift(images01[index], 2, generator)
            loss = F.cross_entropy(module(teacher.normalize(x)), labels[index],
                                   label_smoothing=0.05)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(index)
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            print(f"  {name} epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f}",
                  flush=True)
    module.eval()
    return teacher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every network (default: each one's own, in TRAINING)")
    parser.add_argument("--networks", nargs="+", choices=list(D.BUILDERS),
                        default=list(D.BUILDERS), help="which networks to train (default: all)")
    parser.add_argument("--out", type=Path, default=D.DATA,
                        help="where to write the files (default: the package's data folder)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from safetensors.torch import save

    splits = make_splits()
    if not _same_splits(args.out / D.SPLITS_FILE.name, splits):
        atomic_write_bytes(args.out / D.SPLITS_FILE.name, save(splits, metadata={
            "source": "sklearn.datasets.load_digits",
            "split": "train_test_split(test_size=0.25, random_state=0, stratify=labels)",
            "values": "uint8 0..16, 8x8; upscaled to 32x32 RGB at load time"}))
    train_x, train_y = D.upscale(splits["train_images"]), splits["train_labels"]
    held_x, held_y = D.upscale(splits["heldout_images"]), splits["heldout_labels"]
    print(f"digits: {len(train_y)} train, {len(held_y)} held-out images")

    failed = False
    for seed, name in enumerate(D.BUILDERS):
        if name not in args.networks:
            continue
        start = time.perf_counter()
        settings = TRAINING[name]
        epochs = args.epochs or settings.epochs
        teacher = train(name, train_x, train_y, epochs=epochs, seed=seed, lr=settings.lr,
                        weight_decay=settings.weight_decay)
        train_acc = accuracy(teacher, train_x, train_y)
        held_acc = accuracy(teacher, held_x, held_y)
        params = sum(p.numel() for p in teacher.module.parameters())
        print(f"{name}: {params} parameters, train accuracy {train_acc:.4f}, held-out "
              f"accuracy {held_acc:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
        save_teacher(teacher, args.out / D.WEIGHTS[name].name, extra={
            "heldout_accuracy": f"{held_acc:.4f}", "train_accuracy": f"{train_acc:.4f}",
            "trained_by": "scripts/train_digits.py", "epochs": str(epochs),
            "seed": str(seed)})
        failed |= held_acc < MIN_ACCURACY
    if failed:
        print(f"FAILED: a network is below {MIN_ACCURACY:.0%} on the held-out split")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
