"""A progress display for long commands: progress, it/s, ETA, loss and accuracy that fit.

On a terminal it is a live display that always fits the terminal's width (80 columns
included): the first line holds the bar, ``M/N``, it/s, the ETA, the total loss and the
verifier accuracy; a second line holds the stage description (when it does not fit
beside the bar) and the loss terms, largest contribution first, wrapped once and then
cut with ``…`` (the least important go last). With several batches a line above shows
how many are done. In quiet mode (or when stderr is not a terminal, e.g. in logs) it
prints one plain, labelled line per reported checkpoint instead.

Batches are numbered from 1 everywhere (``batch 1/2``). A new batch or stage clears
the previous losses, so nothing stale is shown.

Example (quiet, printing to stdout; the default is a live display on stderr):
    >>> import sys
    >>> from rich.console import Console
    >>> with ProgressDisplay(quiet=True, console=Console(file=sys.stdout)) as progress:
    ...     progress.start_task("stage 1/2", total=200)
    ...     for i in range(200):
    ...         progress.advance()                       # cheap: no device values
    ...         if (i + 1) % 100 == 0:
    ...             progress.report({"total": 1.2, "bn-stats": 30.0}, accuracy=0.9,
    ...                             weights={"bn-stats": 0.01})
    ...     progress.batch_summary({"total": 1.1, "best_total": 1.0}, accuracy=0.93)
    stage 1/2 100/200 ... it/s ETA ... loss 1.2 verifier 90.0% | weighted: bn-stats 0.3
    stage 1/2 200/200 ... it/s ETA 0:00:00 loss 1.2 verifier 90.0% | weighted: bn-stats 0.3
    saved the lowest-loss iterate: loss 1 (last 1.1), verifier 93.0%
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

#: Keys of a ``losses`` dict that are totals, not terms.
TOTAL_KEYS = ("total", "loss")
BAR_MIN, BAR_MAX = 10, 40
_BAR_DONE, _BAR_TODO = "━", "─"


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


def format_time(seconds: float | None) -> str:
    """``H:MM:SS`` (hours unbounded), or ``-:--:--`` when unknown.

    Example:
        >>> format_time(3725.2), format_time(None)
        ('1:02:05', '-:--:--')
    """
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--:--"
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def loss_terms(losses: Mapping[str, float], weights: Mapping[str, float] | None = None,
               ) -> tuple[str, list[tuple[str, float]]]:
    """The loss terms to show beside the total: ``(label, [(name, value), ...])``.

    With ``weights`` (term name -> weight) the terms are the weighted contributions
    (``weight * value``), labelled ``"weighted"``; without, the values as given. Largest
    first, so a cut line loses the least important; totals are left out.

    Example:
        >>> loss_terms({"total": 1.0, "ce": 0.5, "bn": 40.0}, {"ce": 1.0, "bn": 0.01})
        ('weighted', [('ce', 0.5), ('bn', 0.4)])
    """
    names = [k for k in losses if k not in TOTAL_KEYS and k != "best_total"]
    if weights:
        terms = [(k, weights[k] * losses[k]) for k in names if k in weights]
        rest = [(k, losses[k]) for k in names if k not in weights]
        return "weighted", sorted(terms, key=lambda t: -abs(t[1])) + rest
    return "", [(k, losses[k]) for k in names]


def _figure(value: float) -> str:
    return f"{value:.4g}"


def _wrap(items: list[str], width: int, max_lines: int, indent: str = "  ") -> list[str]:
    """Pack ``items`` into at most ``max_lines`` lines of ``width``; cut the rest with ``…``."""
    lines: list[str] = []
    line = ""
    for i, item in enumerate(items):
        candidate = f"{line}  {item}" if line else f"{indent}{item}"
        if len(candidate) <= width:
            line = candidate
            continue
        if line and len(lines) + 1 < max_lines:
            lines.append(line)
            line = f"{indent}{item}"
            if len(line) <= width:
                continue
        # No room: end this line with an ellipsis (the remaining items are dropped).
        line = (line + "  …") if line and len(line) + 3 <= width else (line or indent + item)
        if len(line) > width:
            line = line[:width - 1] + "…"
        lines.append(line)
        return lines
    if line:
        lines.append(line)
    return lines


class _Live:
    """The live renderable: recomputed at every refresh for the console's current width."""

    def __init__(self, display: ProgressDisplay):
        self.display = display

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.display.render_lines(options.max_width):
            yield Text(line, no_wrap=True, overflow="ellipsis")


class ProgressDisplay:
    """Live progress of a long job, or plain lines when ``quiet`` (or not on a terminal).

    ``enabled=False`` prints nothing at all (torchrun ranks other than 0).
    ``start_task(description, total)`` begins a stage (and clears the shown losses),
    ``advance()`` counts an iteration, ``report(losses, accuracy, weights=...)`` shows
    the latest losses (and prints a line in quiet mode), ``batch_summary(...)`` says what
    a finished batch saved, ``log(message)`` prints above the live lines.
    ``accuracy_label`` names the accuracy (``"verifier"``; ``"test"`` for distillation).

    Example:
        >>> import sys
        >>> from rich.console import Console
        >>> display = ProgressDisplay(quiet=True, console=Console(file=sys.stdout))
        >>> with display:
        ...     display.start_task("stage 1/1", total=10)
        ...     display.advance(10)
        ...     display.report({"total": 4.72, "bn-stats": 300.0}, accuracy=0.938,
        ...                    weights={"bn-stats": 0.01})
        stage 1/1 10/10 ... it/s ETA 0:00:00 loss 4.72 verifier 93.8% | weighted: bn-stats 3
    """

    def __init__(self, quiet: bool = False, console: Console | None = None,
                 enabled: bool = True, accuracy_label: str = "verifier"):
        self.console = console or Console(stderr=True)
        self.plain = quiet or not self.console.is_terminal
        self.enabled = enabled  # False: print nothing (e.g. torchrun ranks other than 0)
        self.accuracy_label = accuracy_label
        self._live = None
        self._description = ""
        self._done = 0
        self._total = 0
        self._started = time.perf_counter()
        self._losses: dict[str, float] = {}
        self._accuracy: float | None = None
        self._weights: dict[str, float] | None = None
        self._batch = ""            # "batch 2/10" while a batch runs
        self._batches: tuple[int, int] | None = None  # (done, total) batches
        self._batches_first: int | None = None  # batches already done when this session began
        self._batches_started = time.perf_counter()

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> ProgressDisplay:
        if self.enabled and not self.plain:
            from rich.live import Live

            # Other output printed meanwhile goes above the live lines (rich redirects it).
            self._live = Live(_Live(self), console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    # -- the stage task ----------------------------------------------------------------
    def start_task(self, description: str, total: int) -> None:
        """Begin a stage of ``total`` iterations; the previous losses are cleared."""
        self._description, self._total, self._done = description, int(total), 0
        self._started = time.perf_counter()
        self._clear()
        self._refresh()

    def advance(self, n: int = 1) -> None:
        self._done += n

    def rate(self) -> float:
        """Iterations per second of the current stage."""
        elapsed = time.perf_counter() - self._started
        return self._done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left in the current stage at the current rate (``None`` when unknown)."""
        rate = self.rate()
        return max(self._total - self._done, 0) / rate if rate > 0 else None

    def report(self, losses: Mapping[str, float], accuracy: float | None = None,
               weights: Mapping[str, float] | None = None) -> None:
        """Show the latest losses (``"total"`` or ``"loss"`` is the headline figure).

        ``weights`` (term name -> weight) shows the terms as weighted contributions.
        """
        self._losses = {k: float(v) for k, v in losses.items()}
        self._accuracy = accuracy
        if weights is not None:
            self._weights = {k: float(v) for k, v in weights.items()}
        if self._live is not None:
            self._refresh()
        elif self.enabled:
            self._print(self.plain_line())

    def _clear(self) -> None:
        self._losses, self._accuracy = {}, None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    # -- the invkit.pipeline progress protocol (called on rank 0 only) --------------------
    def batch_start(self, batch, done: int, total: int) -> None:
        """A batch begins; ``done`` of ``total`` batches are complete (all ranks)."""
        self._batch = f"batch {done + 1}/{total}"
        self._set_batches(done, total)
        self._description, self._done, self._total = "", 0, 0
        self._clear()
        if self.plain:
            self.log(f"{self._batch}: {len(batch.targets)} images, seed {batch.seed}")
        self._refresh()

    def batch_done(self, done: int, total: int) -> None:
        """``done`` of ``total`` batches are complete."""
        self._set_batches(done, total)
        if self.plain and done:
            self.log(f"{done}/{total} batches done")
        self._refresh()

    def batch_summary(self, losses: Mapping[str, float] | None = None,
                      accuracy: float | None = None, *, teacher_accuracy: float | None = None,
                      kept: str = "the lowest-loss iterate") -> None:
        """Say what a finished batch saved: which iterate, its loss, the final accuracies.

        ``losses`` are the batch's final figures (``"best_total"``: the loss of the kept
        iterate; ``"total"``: the last one), ``accuracy`` the verifier's on the saved
        images. Printed as one line in both modes.

        Example:
            >>> import sys
            >>> from rich.console import Console
            >>> from invkit.pipeline.plan import plan_batches
            >>> plan = plan_batches(num_classes=10, batch_size=5, num_batches=2, seed=0)
            >>> display = ProgressDisplay(quiet=True, console=Console(file=sys.stdout))
            >>> display.batch_start(plan[0], done=0, total=2)
            batch 1/2: 5 images, seed ...
            >>> display.batch_summary({"total": 4.72, "best_total": 4.1}, accuracy=0.2,
            ...                       teacher_accuracy=1.0)
            batch 1/2 saved the lowest-loss iterate: loss 4.1 (last 4.72), teacher 100.0%, verifier 20.0%
        """
        losses = dict(losses or {})
        head = f"{self._batch} saved" if self._batch else "saved"
        parts = []
        best, last = losses.get("best_total"), _headline(losses)
        if best is not None:
            text = f"loss {_figure(best)}"
            if last is not None and last != best:
                text += f" (last {_figure(last)})"
            parts.append(text)
        elif last is not None:
            parts.append(f"loss {_figure(last)}")
        if teacher_accuracy is not None:
            parts.append(f"teacher {100 * teacher_accuracy:.1f}%")
        if accuracy is not None:
            parts.append(f"{self.accuracy_label} {100 * accuracy:.1f}%")
        self.log(f"{head} {kept}" + (": " + ", ".join(parts) if parts else ""))

    def _set_batches(self, done: int, total: int) -> None:
        if self._batches_first is None:
            self._batches_first, self._batches_started = done, time.perf_counter()
        self._batches = (done, total)

    def log(self, message: str) -> None:
        """Print a line (above the live lines on a terminal)."""
        if self.enabled:
            self._print(message)

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    # -- rendering -------------------------------------------------------------------
    def _figures(self) -> list[str]:
        """``1200/2000``, ``31.2 it/s``, ``ETA 0:00:25``, ``loss 4.72``, ``verifier 93.8%``."""
        figures = [f"{self._done}/{self._total}", f"{self.rate():.1f} it/s",
                   f"ETA {format_time(self.eta())}"]
        headline = _headline(self._losses)
        if headline is not None:
            figures.append(f"loss {_figure(headline)}")
        if self._accuracy is not None:
            figures.append(f"{self.accuracy_label} {100 * self._accuracy:.1f}%")
        return figures

    def _title(self) -> str:
        desc = self._description
        if self._batch and not desc.startswith("batch"):
            return f"{self._batch} {desc}".strip()
        return desc

    def _term_items(self) -> list[str]:
        label, terms = loss_terms(self._losses, self._weights)
        items = [f"{name} {_figure(value)}" for name, value in terms]
        if label and items:
            items[0] = f"{label}: {items[0]}"
        if "best_total" in self._losses:
            items.append(f"best loss {_figure(self._losses['best_total'])}")
        return items

    def plain_line(self) -> str:
        """The quiet-mode line of the current state (what a log shows per checkpoint)."""
        text = " ".join([self._title(), *self._figures()]).strip()
        items = self._term_items()
        return f"{text} | {'  '.join(items)}" if items else text

    def render_lines(self, width: int) -> list[str]:
        """The live display's lines for a terminal ``width`` columns wide (none longer)."""
        lines = []
        if self._batches is not None and self._batches[1] > 1:
            lines.append(self._batches_line(width))
        if self._total:
            lines.extend(self._stage_lines(width))
        return [line if len(line) <= width else line[:width - 1] + "…" for line in lines]

    def _stage_lines(self, width: int) -> list[str]:
        title, figures = self._title(), self._figures()
        right = "  ".join(figures)
        while len(right) + 1 > width and len(figures) > 1:
            figures.pop(2 if len(figures) > 3 else -1)  # narrower than ~60: drop ETA first
            right = "  ".join(figures)
        beside = title and len(title) + 1 + BAR_MIN + 1 + len(right) <= width
        room = width - len(right) - 1 - (len(title) + 1 if beside else 0)
        bar = _bar(self._done, self._total, min(room, BAR_MAX)) if room >= 4 else ""
        first = " ".join(x for x in ((title if beside else ""), bar, right) if x)
        items = self._term_items()
        if title and not beside:
            items.insert(0, f"{title}:")
        return [first, *_wrap(items, width, max_lines=2)]

    def _batches_line(self, width: int) -> str:
        done, total = self._batches
        made = done - (self._batches_first or 0)
        elapsed = time.perf_counter() - self._batches_started
        eta = (total - done) * elapsed / made if made > 0 else None
        right = f"{done}/{total} done  ETA {format_time(eta)}"
        room = width - len("batches") - len(right) - 2
        return " ".join(x for x in ("batches", _bar(done, total, min(room, BAR_MAX))
                                    if room >= 4 else "", right) if x)


def _headline(losses: Mapping[str, float]) -> float | None:
    for key in TOTAL_KEYS:
        if key in losses:
            return losses[key]
    return None


def _bar(done: int, total: int, width: int) -> str:
    filled = round(width * min(done, total) / total) if total > 0 else 0
    return _BAR_DONE * filled + _BAR_TODO * (width - filled)


def quiet_console() -> Console:
    """A console for plain, uncoloured lines on stderr (for logs)."""
    return Console(file=sys.stderr, no_color=True, highlight=False)
