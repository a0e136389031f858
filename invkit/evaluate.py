"""How recognisable are generated images? Accuracy of an independent classifier on them.

The images stream from disk (:class:`invkit.data.GeneratedImages`), batch by batch.
``eval.json`` in the directory keeps one result per verifier, keyed by the verifier
spec: evaluating with another verifier adds its result, the same verifier replaces it.

Example:
    >>> from invkit.output import class_dirname, save_png
    >>> from invkit.teachers.digits import digits_dataset
    >>> real, labels = digits_dataset("heldout")        # real held-out digits, as stand-ins
    >>> for n in range(40):                               # for generated images
    ...     _ = save_png(f"generations/digits/{class_dirname(int(labels[n]), 10, None)}"
    ...                  f"/{n:03d}.png", real[n])
    >>> from invkit.teachers import load_teacher
    >>> report = evaluate_dir("generations/digits", load_teacher("digits-verifier"))
    >>> report["top1"], report["per_class"][0]
    (1.0, {'class': 0, 'name': '0', 'count': 3, 'correct': 3, 'accuracy': 1.0})
    >>> list(read_eval_results("generations/digits"))
    ['digits-verifier']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from invkit.data import GeneratedImages, to_float01
from invkit.errors import InvkitError
from invkit.output import write_json
from invkit.specs import Teacher
from invkit.verifiers import build_verifier, topk_accuracy


@torch.no_grad()
def predict_logits(network: Teacher, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``network``'s logits (float32, on the CPU) on images (uint8 or float in [0, 1]), in batches."""
    predict = build_verifier(network).predict
    network.module.eval()
    chunks = [predict(to_float01(images[i:i + batch_size])).cpu()
              for i in range(0, images.shape[0], batch_size)]
    if not chunks:
        return torch.zeros(0, network.meta.num_classes)
    return torch.cat(chunks)


def predict_dataset(network: Teacher, dataset: torch.utils.data.Dataset, batch_size: int = 256,
                    num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``network``'s logits (CPU float32) on a dataset of ``(image, target)``, and the targets.

    Batches are read in order through a DataLoader, so the logits equal those of
    :func:`invkit.evaluate.predict_logits` on the same images as one tensor.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> dataset = torch.utils.data.TensorDataset(*digits_dataset("heldout"))
        >>> logits, targets = predict_dataset(load_teacher("digits-verifier"), dataset)
        >>> logits.shape, targets.shape
        (torch.Size([450, 10]), torch.Size([450]))
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    logits, targets = [], []
    for images, batch_targets in loader:
        logits.append(predict_logits(network, images, batch_size))
        targets.append(torch.as_tensor(batch_targets, dtype=torch.int64))
    if not logits:
        return torch.zeros(0, network.meta.num_classes), torch.zeros(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(targets)


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
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> images, targets = digits_dataset("heldout")
        >>> verifier = load_teacher("digits-verifier")
        >>> evaluate_images(verifier, images[:100], targets[:100])["top1"]
        1.0
    """
    if class_names is None:
        class_names = verifier.meta.class_names
    logits = predict_logits(verifier, images, batch_size)
    report = accuracy_report(logits, targets, class_names, k=k)
    report["verifier"] = verifier.name
    return report


def evaluate_dataset(verifier: Teacher, dataset: torch.utils.data.Dataset, *,
                     class_names: dict[int, str] | Sequence[str] | None = None,
                     batch_size: int = 256, k: int = 5, num_workers: int = 0) -> dict:
    """Accuracy of ``verifier`` on a dataset of ``(image, target)`` (e.g. GeneratedImages).

    The same report as :func:`evaluate_images`, read batch by batch (``num_workers``
    DataLoader workers decode the images).

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> images, targets = digits_dataset("heldout")
        >>> dataset = torch.utils.data.TensorDataset(images[:100], targets[:100])
        >>> evaluate_dataset(load_teacher("digits-verifier"), dataset)["top1"]
        1.0
    """
    if class_names is None:
        class_names = verifier.meta.class_names
    logits, targets = predict_dataset(verifier, dataset, batch_size, num_workers)
    report = accuracy_report(logits, targets, class_names, k=k)
    report["verifier"] = verifier.name
    return report


EVAL_FILE = "eval.json"


def evaluate_dir(directory: Path | str, verifier: Teacher, *, batch_size: int = 256, k: int = 5,
                 write: bool = True, key: str | None = None, num_workers: int = 0) -> dict:
    """Evaluate ``verifier`` on the generated images in ``directory``; record it in ``eval.json``.

    ``eval.json`` maps each verifier (``key``: the spec it was given as; default the
    verifier's name) to its report; other verifiers' results are kept. Class names come
    from the verifier's metadata, else from the run (manifest, folder names).

    Example:
        >>> from invkit.output import class_dirname, save_png
        >>> from invkit.teachers.digits import digits_dataset
        >>> real, labels = digits_dataset("heldout")        # real held-out digits, as stand-ins
        >>> for n in range(40):                               # for generated images
        ...     _ = save_png(f"generations/digits/{class_dirname(int(labels[n]), 10, None)}"
        ...                  f"/{n:03d}.png", real[n])
        >>> from invkit.teachers import load_teacher
        >>> evaluate_dir("generations/digits", load_teacher("digits-verifier"))["top1"]
        1.0
        >>> list(read_eval_results("generations/digits"))
        ['digits-verifier']
    """
    directory = Path(directory)
    dataset = GeneratedImages(directory)
    names = verifier.meta.class_names or dataset.class_names
    report = {"directory": str(directory),
              **evaluate_dataset(verifier, dataset, class_names=names, batch_size=batch_size,
                                 k=k, num_workers=num_workers)}
    if write:
        record_eval_result(directory, key or verifier.name, report)
    return report


def read_eval_results(directory: Path | str) -> dict[str, dict]:
    """``{verifier spec: report}`` from ``directory/eval.json`` (empty when there is none).

    A file from an older invkit (one report, not keyed) is read as that report keyed
    by its verifier's name.
    """
    path = Path(directory) / EVAL_FILE
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise InvkitError(f"{str(path)!r} is not valid JSON; move it away to start afresh") from None
    if not isinstance(results, dict):
        raise InvkitError(f"{str(path)!r} does not hold invkit evaluation results")
    if "top1" in results and "per_class" in results:  # the single-report format
        return {str(results.get("verifier", "verifier")): results}
    return results


def record_eval_result(directory: Path | str, key: str, report: dict) -> Path:
    """Add (or replace) ``key``'s report in ``directory/eval.json``, atomically."""
    results = read_eval_results(directory)
    results[key] = report
    return write_json(Path(directory) / EVAL_FILE, results)


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


__all__ = ["predict_logits", "predict_dataset", "accuracy_report", "evaluate_images",
           "evaluate_dataset", "evaluate_dir", "read_eval_results", "record_eval_result",
           "per_class_table"]
