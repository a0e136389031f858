"""A progress display for long commands: stage, iteration, it/s, named losses, accuracy.

On a terminal it is a live rich progress bar; in quiet mode (or when stderr is not a
terminal, e.g. in logs) it prints one plain line per reported checkpoint instead.

Example:
    >>> with ProgressDisplay(quiet=False) as progress:
    ...     progress.start_task("batch 1/4 stage 1/2", total=2000)
    ...     for i in range(2000):
    ...         progress.advance()                       # cheap: no device values
    ...         if (i + 1) % 100 == 0:
    ...             progress.report({"total": 1.2, "bn-stats": 0.3}, accuracy=0.9)
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)


def format_losses(losses: dict[str, float], accuracy: float | None = None) -> str:
    """``total=1.234 cross-entropy=0.1 bn-stats=2.5 acc=93.8%``: totals first, short floats.

    Example:
        >>> format_losses({"cross-entropy": 0.5, "total": 1.0}, accuracy=0.5)
        'total=1 cross-entropy=0.5 acc=50.0%'
    """
    keys = [k for k in ("total", "best_total") if k in losses]
    keys += [k for k in losses if k not in keys]
    text = " ".join(f"{k}={losses[k]:.4g}" for k in keys)
    if accuracy is not None:
        text += f" acc={100 * accuracy:.1f}%"
    return text


class ProgressDisplay:
    """Live progress of a long job, or plain lines when ``quiet`` (or not on a terminal).

    ``enabled=False`` prints nothing at all (torchrun ranks other than 0).
    ``start_task(description, total)`` begins a stage, ``advance()`` counts an iteration,
    ``report(losses, accuracy)`` shows the latest named losses (and prints a line in quiet
    mode), ``log(message)`` prints above the bar.
    """

    def __init__(self, quiet: bool = False, console: Console | None = None,
                 enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.plain = quiet or not self.console.is_terminal
        self.enabled = enabled  # False: print nothing (e.g. torchrun ranks other than 0)
        self._progress: Progress | None = None
        self._task = None
        self._description = ""
        self._done = 0
        self._total = 0
        self._started = time.perf_counter()
        self._status = ""
        self._batch = ""
        self._batch_task = None

    def __enter__(self) -> ProgressDisplay:
        if self.enabled and not self.plain:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[speed]}"), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                console=self.console, transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def start_task(self, description: str, total: int) -> None:
        self._description, self._total, self._done = description, int(total), 0
        self._started = time.perf_counter()
        if self._progress is not None:
            # One line per stage, reused: long multi-batch runs do not scroll.
            if self._task is None:
                self._task = self._progress.add_task(description, total=total, speed="",
                                                     status=self._status)
            else:
                self._progress.reset(self._task, total=total, description=description,
                                     speed="", status=self._status)

    def advance(self, n: int = 1) -> None:
        self._done += n
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, speed=f"{self.rate():.1f} it/s")

    def rate(self) -> float:
        elapsed = time.perf_counter() - self._started
        return self._done / elapsed if elapsed > 0 else 0.0

    def report(self, losses: dict[str, float], accuracy: float | None = None) -> None:
        self._status = format_losses(losses, accuracy)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, status=self._status)
        elif self.enabled:
            self.console.print(
                f"{self._description} {self._done}/{self._total} "
                f"{self.rate():.1f} it/s {self._status}", markup=False, highlight=False,
                soft_wrap=True,
            )

    # The invkit.pipeline progress protocol (called on rank 0 only).
    def batch_start(self, batch, done: int, total: int) -> None:
        """A batch begins; ``done`` of ``total`` batches are complete (all ranks)."""
        self._batch = f"batch {done + 1}/{total}"
        self._batches(done, total)
        if self.plain:
            self.log(f"{self._batch}: {len(batch.targets)} images, seed {batch.seed}")

    def batch_done(self, done: int, total: int) -> None:
        """``done`` of ``total`` batches are complete."""
        self._batches(done, total)
        if self.plain and done:
            self.log(f"{done}/{total} batches done")

    def _batches(self, done: int, total: int) -> None:
        if self._progress is None or total <= 1:
            return
        if self._batch_task is None:
            self._batch_task = self._progress.add_task("batches", total=total, speed="",
                                                       status="")
        self._progress.update(self._batch_task, completed=done, total=total)

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)


def quiet_console() -> Console:
    """A console for plain, uncoloured lines on stderr (for logs)."""
    return Console(file=sys.stderr, no_color=True, highlight=False)
