"""Loss history of a run: one row per checkpoint in ``losses.csv``, a picture, TensorBoard.

``losses.csv`` has one row per reported checkpoint (every ``--save-every`` iterations
and at the end of each stage), with the columns::

    batch, stage, iteration, lr, <term>..., <term>_weighted..., total, best_total,
    verifier_accuracy

``batch`` is the batch's index as in ``manifest.jsonl`` (from 0), ``stage`` and
``iteration`` count from 1 (``iteration`` over all stages), ``<term>`` is the
unweighted loss of each prior, ``<term>_weighted`` the same times its weight (the
weighted terms add up to ``total``). Empty cells: a figure not known at that
checkpoint (e.g. no verifier).

The file survives a killed run: each row is appended with one write and flushed to
disk (``fsync``), and a torn last line left by a kill is dropped when the file is
opened again. On resume, :meth:`LossHistory.start_batch` drops the rows of a batch
that is being redone, so no checkpoint appears twice. A new column (a term first seen
later) rewrites the file atomically with the wider header.

Example:
    >>> history = LossHistory("generations/digits/losses.csv",
    ...                       weights={"cross-entropy": 1.0, "bn-stats": 0.05})
    >>> history.start_batch(0)
    >>> row = history.append(batch=0, stage=1, iteration=100, lr=0.1,
    ...                      losses={"cross-entropy": 0.2, "bn-stats": 30.0, "total": 1.7},
    ...                      accuracy=0.9)
    >>> history.close()
    >>> print(open("generations/digits/losses.csv").read())
    batch,stage,iteration,lr,cross-entropy,bn-stats,cross-entropy_weighted,bn-stats_weighted,total,best_total,verifier_accuracy
    0,1,100,0.1,0.2,30.0,0.2,1.5,1.7,,0.9
    <BLANKLINE>
    >>> plot("generations/digits/losses.csv", "generations/digits/losses.png")
    PosixPath('generations/digits/losses.png')
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from invkit.errors import InvkitError
from invkit.output import atomic_write_bytes

LEADING = ("batch", "stage", "iteration", "lr")
TRAILING = ("total", "best_total", "verifier_accuracy")
WEIGHTED_SUFFIX = "_weighted"
PLOT_EXTRA_NOTE = "losses.png skipped: matplotlib is not installed (pip install 'invkit[plot]')"
TENSORBOARD_MISSING = ("--tensorboard needs the tensorboard package: "
                       "pip install 'invkit[tensorboard]'")


def term_weights(objective: Iterable[tuple[float, Any]]) -> dict[str, float]:
    """``{label: weight}`` of an :class:`invkit.objective.Objective` (labels as in its losses).

    Example:
        >>> from invkit.priors import CrossEntropy, TotalVariation
        >>> term_weights(CrossEntropy() + 1e-4 * TotalVariation(p=2))
        {'cross-entropy': 1.0, 'tv-l2': 0.0001}
    """
    labels = objective.labels() if hasattr(objective, "labels") else None
    terms = list(objective)
    if labels is None:
        labels = [prior.name for _, prior in terms]
    return {label: float(weight) for label, (weight, _) in zip(labels, terms)}


def checkpoint_row(*, batch: int, stage: int, iteration: int, lr: float,
                   losses: Mapping[str, float], weights: Mapping[str, float] | None = None,
                   accuracy: float | None = None) -> dict[str, Any]:
    """One row of ``losses.csv`` as a dict (column -> number or ``None``).

    Example:
        >>> checkpoint_row(batch=0, stage=1, iteration=10, lr=0.1,
        ...                losses={"l2": 4.0, "total": 0.4}, weights={"l2": 0.1})
        {'batch': 0, 'stage': 1, 'iteration': 10, 'lr': 0.1, 'l2': 4.0, 'l2_weighted': 0.4, 'total': 0.4, 'best_total': None, 'verifier_accuracy': None}
    """
    weights = weights or {}
    terms = [k for k in losses if k not in TRAILING]
    row: dict[str, Any] = {"batch": int(batch), "stage": int(stage),
                           "iteration": int(iteration), "lr": float(lr)}
    row.update({k: float(losses[k]) for k in terms})
    row.update({k + WEIGHTED_SUFFIX: float(weights[k]) * float(losses[k])
                for k in terms if k in weights})
    row["total"] = _float_or_none(losses.get("total"))
    row["best_total"] = _float_or_none(losses.get("best_total"))
    row["verifier_accuracy"] = _float_or_none(accuracy)
    return row


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # exact round trip
    return str(value)


def _order(columns: Iterable[str]) -> list[str]:
    """Header order: leading keys, the terms, their weighted forms, then the totals."""
    columns = list(dict.fromkeys(columns))
    terms = [c for c in columns if c not in LEADING and c not in TRAILING
             and not c.endswith(WEIGHTED_SUFFIX)]
    weighted = [c for c in columns if c.endswith(WEIGHTED_SUFFIX) and c not in TRAILING]
    return [*LEADING, *terms, *weighted, *TRAILING]


def read_rows(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """The header and complete rows of a ``losses.csv`` (a torn last line is left out).

    Example:
        >>> _ = atomic_write_bytes("run/losses.csv", b"batch,stage,iteration,lr,total\\n"
        ...                        b"0,1,100,0.1,1.7\\n0,1,2")       # killed mid-row
        >>> header, rows = read_rows("run/losses.csv")
        >>> len(rows), rows[0]["iteration"], float(rows[0]["total"])
        (1, '100', 1.7)
    """
    text = Path(path).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]  # a kill mid-row: drop the partial line
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return [], []
    if header[:len(LEADING)] != list(LEADING):
        raise InvkitError(f"{str(path)!r} is not an invkit loss history "
                          f"(its header starts {','.join(header[:4])!r})")
    rows = [dict(zip(header, values)) for values in reader if len(values) == len(header)]
    return header, rows


class LossHistory:
    """``losses.csv`` of a run: :meth:`append` one row per checkpoint, flushed to disk.

    ``weights`` (term -> weight, e.g. :func:`term_weights` of the objective) adds the
    weighted columns. ``resume=False`` starts the file afresh; ``resume=True`` keeps the
    rows already there (call :meth:`start_batch` for every batch that (re)starts, so a
    redone batch's old rows go). ``tensorboard`` (a directory) also writes every row to
    TensorBoard (see :class:`TensorBoardSink`). Use one writer per file (under torchrun,
    one file per rank, joined by :func:`merge`).

    Example:
        >>> from pathlib import Path
        >>> from invkit.priors import CrossEntropy, TotalVariation
        >>> objective = CrossEntropy() + 1e-4 * TotalVariation(p=2)
        >>> out = Path("generations/history")
        >>> with LossHistory(out / "losses.csv", weights=term_weights(objective)) as history:
        ...     history.start_batch(3)
        ...     row = history.append(batch=3, stage=1, iteration=100, lr=0.05,
        ...                          losses={"cross-entropy": 0.5, "tv-l2": 2000.0,
        ...                                  "total": 0.7}, accuracy=None)
        >>> row["tv-l2_weighted"]
        0.2
    """

    def __init__(self, path: str | os.PathLike, weights: Mapping[str, float] | None = None, *,
                 resume: bool = True, tensorboard: str | os.PathLike | None = None):
        self.path = Path(path)
        self.weights = dict(weights or {})
        self.tensorboard = TensorBoardSink(tensorboard) if tensorboard is not None else None
        self.header: list[str] = []
        self._batches: set[str] = set()
        if resume and self.path.exists():
            self.header, rows = read_rows(self.path)
            self._batches = {row["batch"] for row in rows}
            if self.path.read_bytes()[-1:] not in (b"", b"\n"):
                self._rewrite(self.header, rows)  # drop a torn last line now
        elif self.path.exists():
            self.path.unlink()

    def __enter__(self) -> LossHistory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start_batch(self, batch: int) -> None:
        """Batch ``batch`` (re)starts: drop any rows an earlier, cut-off attempt left."""
        key = str(int(batch))
        if key in self._batches:
            header, rows = read_rows(self.path)
            self._rewrite(header, [row for row in rows if row["batch"] != key])
            self._batches.discard(key)
        if self.tensorboard is not None:
            self.tensorboard.start_batch(batch)

    def append(self, *, batch: int, stage: int, iteration: int, lr: float,
               losses: Mapping[str, float], accuracy: float | None = None,
               weights: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Write one checkpoint's row (and return it); on disk when this returns."""
        row = checkpoint_row(batch=batch, stage=stage, iteration=iteration, lr=lr,
                             losses=losses, weights=self.weights if weights is None else weights,
                             accuracy=accuracy)
        if not self.header or not set(row) <= set(self.header):
            old_header, rows = read_rows(self.path) if self.path.exists() else ([], [])
            self._rewrite(_order([*old_header, *row]), rows)
        line = _csv_line([_cell(row.get(column)) for column in self.header])
        self._append(line)
        self._batches.add(str(int(batch)))
        if self.tensorboard is not None:
            self.tensorboard.append(row)
        return row

    def _append(self, line: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line.encode("utf-8"))  # one write: a kill leaves whole rows
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rewrite(self, header: list[str], rows: list[Mapping[str, Any]]) -> None:
        text = _csv_line(header) + "".join(
            _csv_line([_cell(row.get(column)) for column in header]) for row in rows)
        atomic_write_bytes(self.path, text.encode("utf-8"))
        self.header = list(header)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _csv_line(cells: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def merge(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Join several histories (e.g. one per torchrun rank) into ``out``, by batch and iteration.

    Example:
        >>> from pathlib import Path
        >>> out = Path("generations/merged")
        >>> for rank in (0, 1):                 # rank r wrote batch r
        ...     with LossHistory(out / f"losses.rank{rank}.csv") as history:
        ...         _ = history.append(batch=rank, stage=1, iteration=100, lr=0.1,
        ...                            losses={"total": 1.0 + rank})
        >>> merge([out / "losses.rank0.csv", out / "losses.rank1.csv"], out / "losses.csv")
        PosixPath('generations/merged/losses.csv')
        >>> print(open(out / "losses.csv").read())
        batch,stage,iteration,lr,total,best_total,verifier_accuracy
        0,1,100,0.1,1.0,,
        1,1,100,0.1,2.0,,
        <BLANKLINE>
    """
    header: list[str] = []
    rows: list[dict[str, str]] = []
    for path in paths:
        if Path(path).exists():
            part_header, part_rows = read_rows(path)
            header += part_header
            rows += part_rows
    rows.sort(key=lambda r: (int(r["batch"]), int(r["iteration"])))
    header = _order(header) if header else list(LEADING + TRAILING)
    text = _csv_line(header) + "".join(
        _csv_line([row.get(column, "") for column in header]) for row in rows)
    return atomic_write_bytes(out, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------
# losses.png


def plot(csv_path: str | os.PathLike, png_path: str | os.PathLike,
         log: Callable[[str], None] | None = None) -> Path | None:
    """Draw ``losses.png`` from ``losses.csv``: one panel per loss term, the total, lr, accuracy.

    Each panel plots a figure against the iteration: one line per batch for up to 8
    batches, else the mean over batches with a min-max band. The y axis is logarithmic
    where every value is positive. Term panels show the unweighted loss, their title
    the weight. Without matplotlib (``pip install 'invkit[plot]'``) no picture is drawn:
    ``log`` (default: stderr) gets one line saying so, and ``None`` is returned.

    Example:
        >>> with LossHistory("generations/plot/losses.csv") as history:
        ...     for iteration in (100, 200):
        ...         _ = history.append(batch=0, stage=1, iteration=iteration, lr=0.1,
        ...                            losses={"total": 2.0 - iteration / 200})
        >>> plot("generations/plot/losses.csv", "generations/plot/losses.png")
        PosixPath('generations/plot/losses.png')
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        (log or _stderr)(PLOT_EXTRA_NOTE)
        return None
    header, rows = read_rows(csv_path)
    panels = _panels(header, rows)
    if not panels:
        (log or _stderr)(f"losses.png skipped: {str(csv_path)!r} holds no checkpoints yet")
        return None
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    # No pyplot: no global state, no display backend, safe in any process. Fixed margins,
    # not the constrained layout: that doubled the cost of every run's picture (~1 s).
    height = 2.8 * lines
    figure = Figure(figsize=(4.2 * columns, height))
    figure.subplots_adjust(left=0.22 / columns, right=0.98, bottom=0.5 / height,
                           top=1 - 0.3 / height, wspace=0.35, hspace=0.6)
    FigureCanvasAgg(figure)
    for k, (column, title) in enumerate(panels):
        axes = figure.add_subplot(lines, columns, k + 1)
        _draw(axes, rows, column)
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("iteration", fontsize=8)
        axes.tick_params(labelsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(png_path, buffer.getvalue())


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _panels(header: list[str], rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(column, title) of every panel worth drawing: columns with at least one value."""
    def filled(column: str) -> bool:
        return any(row.get(column) for row in rows)

    panels = []
    for column in header:
        if column in ("batch", "stage", "iteration", "best_total") or column.endswith(WEIGHTED_SUFFIX):
            continue
        if not filled(column):
            continue
        title = {"total": "total (weighted sum)", "lr": "learning rate",
                 "verifier_accuracy": "verifier accuracy"}.get(column, column)
        weighted = column + WEIGHTED_SUFFIX
        if weighted in header and filled(weighted):
            row = next(r for r in rows if r.get(column) and r.get(weighted))
            value = float(row[column])
            if value:
                title += f" (weight {float(row[weighted]) / value:.3g})"
        panels.append((column, title))
    # Loss terms and the total first; the learning rate (a known schedule) last.
    return sorted(panels, key=lambda panel: panel[0] == "lr")


def _draw(axes, rows: list[dict[str, str]], column: str) -> None:
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row.get(column):
            series.setdefault(row["batch"], []).append((int(row["iteration"]), float(row[column])))
    values = [v for points in series.values() for _, v in points]
    if len(series) <= 8:
        for batch, points in series.items():
            points.sort()
            axes.plot([p[0] for p in points], [p[1] for p in points], lw=1,
                      label=f"batch {batch}")
        if 1 < len(series):
            axes.legend(fontsize=6)
    else:
        by_step: dict[int, list[float]] = {}
        for points in series.values():
            for step, value in points:
                by_step.setdefault(step, []).append(value)
        steps = sorted(by_step)
        axes.fill_between(steps, [min(by_step[s]) for s in steps],
                          [max(by_step[s]) for s in steps], alpha=0.25, lw=0)
        axes.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], lw=1,
                  label=f"mean of {len(series)} batches")
        axes.legend(fontsize=6)
    if values and 0 < min(values) < max(values) and column != "verifier_accuracy":
        axes.set_yscale("log")


# ---------------------------------------------------------------------------------------
# TensorBoard


def require_tensorboard() -> None:
    """Raise a one-line :class:`InvkitError` unless TensorBoard logging can work.

    Call it while validating options, before any output is created.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise InvkitError(TENSORBOARD_MISSING) from None


class TensorBoardSink:
    """The rows of :class:`LossHistory` as TensorBoard scalars, one run per batch.

    Batch ``b`` logs to ``log_dir/batch_<b:05d>`` (so TensorBoard overlays batches),
    at step = iteration: ``loss/<term>``, ``weighted/<term>``, ``loss/total``, ``lr``,
    ``verifier_accuracy``. Needs ``pip install 'invkit[tensorboard]'`` (otherwise a
    one-line :class:`InvkitError`).

    Example:
        >>> sink = TensorBoardSink("generations/digits/tensorboard")
        >>> sink.append(checkpoint_row(batch=0, stage=1, iteration=100, lr=0.1,
        ...                            losses={"total": 1.0}))
        >>> sink.close()
        >>> sorted(p.name for p in Path("generations/digits/tensorboard").iterdir())
        ['batch_00000']
    """

    def __init__(self, log_dir: str | os.PathLike):
        require_tensorboard()
        self.log_dir = Path(log_dir)
        self._writer = None
        self._batch: int | None = None

    def start_batch(self, batch: int) -> None:
        self._open(int(batch))

    def _open(self, batch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self._batch == batch and self._writer is not None:
            return
        self.close()
        self._writer = SummaryWriter(log_dir=str(self.log_dir / f"batch_{batch:05d}"))
        self._batch = batch

    def append(self, row: Mapping[str, Any]) -> None:
        self._open(int(row["batch"]))
        step = int(row["iteration"])
        for column, value in row.items():
            if value is None or column in ("batch", "stage", "iteration"):
                continue
            if column.endswith(WEIGHTED_SUFFIX):
                tag = "weighted/" + column[:-len(WEIGHTED_SUFFIX)]
            elif column in ("lr", "verifier_accuracy"):
                tag = column
            else:
                tag = "loss/" + column
            self._writer.add_scalar(tag, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._batch = None


__all__ = ["LossHistory", "TensorBoardSink", "checkpoint_row", "merge", "plot", "read_rows",
           "require_tensorboard", "term_weights"]
