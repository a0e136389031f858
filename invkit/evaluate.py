"""How recognisable are generated images? Accuracy of an independent classifier on them.

Example:
    >>> from invkit.teachers import load_teacher
    >>> report = evaluate_dir("generations/digits", load_teacher("digits-verifier"))
    >>> report["top1"], report["per_class"][0]
    (0.94, {'class': 0, 'name': 'zero', 'count': 100, 'correct': 97, 'accuracy': 0.97})
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from invkit.data import dataset_class_names, load_image_dataset, to_float01
from invkit.errors import InvkitError
from invkit.output import write_json
from invkit.specs import Teacher
from invkit.verifiers import TopKAccuracy, topk_accuracy


@torch.no_grad()
def predict_logits(network: Teacher, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``network``'s logits (float32, on the CPU) on images (uint8 or float in [0, 1]), in batches."""
    predict = TopKAccuracy(network).predict
    network.module.eval()
    chunks = [predict(to_float01(images[i:i + batch_size])).cpu()
              for i in range(0, images.shape[0], batch_size)]
    if not chunks:
        return torch.zeros(0, network.meta.num_classes)
    return torch.cat(chunks)


def accuracy_report(logits: torch.Tensor, targets: torch.Tensor,
                    class_names: dict[int, str] | Sequence[str] | None = None, k: int = 5) -> dict:
    """Top-1 (and top-k where there are more than k classes) accuracy and a per-class table.

    Example:
        >>> accuracy_report(torch.tensor([[2., 1.], [0., 3.]]), torch.tensor([0, 0]))["top1"]
        0.5
    """
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions for {targets.shape[0]} targets")
    num_classes = logits.shape[1]
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.numel():
        raise InvkitError(f"class index {int(bad[0])} is outside the classifier's "
                          f"{num_classes} classes (0..{num_classes - 1})")
    correct = logits.argmax(1) == targets
    report: dict = {"images": targets.numel(), **topk_accuracy(logits, targets, k)}
    names = dict(enumerate(class_names)) if isinstance(class_names, Sequence) else (class_names or {})
    rows = []
    for cls in sorted(set(targets.tolist())):
        mask = targets == cls
        hits = int(correct[mask].sum())
        count = int(mask.sum())
        rows.append({"class": cls, "name": names.get(cls), "count": count, "correct": hits,
                     "accuracy": hits / count})
    report["per_class"] = rows
    return report


def evaluate_images(verifier: Teacher, images: torch.Tensor, targets: torch.Tensor, *,
                    class_names: dict[int, str] | Sequence[str] | None = None,
                    batch_size: int = 256, k: int = 5) -> dict:
    """Accuracy of ``verifier`` on images (uint8 or float in [0, 1]) against ``targets``.

    Example:
        >>> evaluate_images(verifier, images, targets)["top1"]
        0.93
    """
    if class_names is None:
        class_names = verifier.meta.class_names
    logits = predict_logits(verifier, images, batch_size)
    report = accuracy_report(logits, targets, class_names, k=k)
    report["verifier"] = verifier.name
    return report


def evaluate_dir(directory: Path | str, verifier: Teacher, *, batch_size: int = 256, k: int = 5,
                 write: bool = True) -> dict:
    """Evaluate ``verifier`` on the generated images in ``directory``; writes ``eval.json`` there.

    Class names come from the verifier's metadata, else from the directory names.

    Example:
        >>> evaluate_dir("generations/digits", load_teacher("digits-verifier"))["top1"]
        0.94
    """
    directory = Path(directory)
    images, targets = load_image_dataset([directory])
    names = verifier.meta.class_names or dataset_class_names([directory])
    report = {"directory": str(directory),
              **evaluate_images(verifier, images, targets, class_names=names,
                                batch_size=batch_size, k=k)}
    if write:
        write_json(directory / "eval.json", report)
    return report


def per_class_table(report: dict, title: str | None = None):
    """A rich table of the per-class accuracies in ``report`` (for the CLI)."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("class", "name", "images", "correct", "accuracy"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for row in report["per_class"]:
        table.add_row(str(row["class"]), row["name"] or "", str(row["count"]), str(row["correct"]),
                      f"{100 * row['accuracy']:.1f}%")
    return table


__all__ = ["predict_logits", "accuracy_report", "evaluate_images", "evaluate_dir",
           "per_class_table"]
