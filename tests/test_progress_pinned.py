"""invkit.progress pinned exactly: every rendered line at several widths (golden), the
plain lines, the wrapping and the figures, with a fake clock so it/s and ETA are exact."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

import invkit.progress as progress
from invkit.pipeline import Batch
from invkit.progress import (
    ProgressDisplay, _bar, _wrap, format_losses, format_time, loss_terms, quiet_console,
)
from tests.golden import assert_golden

LOSSES = {"cross-entropy": 0.0123, "bn-stats": 32.1, "tv-l2": 790.5, "l2": 3012.2,
          "total": 4.724, "best_total": 4.5}
WEIGHTS = {"cross-entropy": 1.0, "bn-stats": 0.05, "tv-l2": 3e-4, "l2": 1e-5}


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress, "time", fake)
    return fake


def _quiet(**kwargs):
    buf = io.StringIO()
    return ProgressDisplay(quiet=True, console=Console(file=buf, width=200), **kwargs), buf


def test_format_losses_order_and_figures():
    assert format_losses({"a": 1.23456, "best_total": 2.0, "total": 3.0}) == (
        "total=3 best_total=2 a=1.235")
    assert format_losses({"best_total": 0.5, "z": 12345.0}, accuracy=0.0) == (
        "best_total=0.5 z=1.234e+04 acc=0.0%")
    assert format_losses({}, accuracy=1) == " acc=100.0%"


def test_format_time_edges():
    assert format_time(float("nan")) == "-:--:--" and format_time(float("inf")) == "-:--:--"
    assert format_time(-5) == "0:00:00" and format_time(59.5) == "0:01:00"
    assert format_time(3599.4) == "0:59:59" and format_time(3600) == "1:00:00"
    assert format_time(61) == "0:01:01"


def test_loss_terms_rest_and_totals_left_out():
    label, terms = loss_terms({"loss": 9.0, "best_total": 8.0, "a": 1.0, "b": -3.0, "c": 7.0,
                               "d": 2.0}, {"a": 1.0, "b": 1.0, "d": 0.5})
    assert (label, terms) == ("weighted", [("b", -3.0), ("a", 1.0), ("d", 1.0), ("c", 7.0)])
    assert loss_terms({"b": 2.0, "a": 1.0, "total": 3.0}, {}) == ("", [("b", 2.0), ("a", 1.0)])


@pytest.mark.parametrize("items, width, max_lines, expected", [
    (["aa", "bb"], 8, 2, ["  aa  bb"]),
    (["aa", "bb"], 7, 2, ["  aa", "  bb"]),
    (["aa", "bb", "cc"], 7, 2, ["  aa", "  bb  …"]),
    (["aa", "bb", "cc"], 6, 2, ["  aa", "  bb"]),
    (["aa", "bb", "cc"], 5, 2, ["  aa", "  bb"]),
    (["aa", "bb"], 7, 1, ["  aa  …"]),
    (["aa", "bb"], 6, 1, ["  aa"]),
    (["abcdefgh"], 6, 2, ["  abc…"]),
    (["a", "abcdefgh"], 6, 2, ["  a", "  abc…"]),
    ([], 10, 2, []),
    (["x"], 3, 1, ["  x"]),
    (["aa", "bbbb", "c"], 6, 3, ["  aa", "  bbbb", "  c"]),
    (["abc", "de"], 9, 1, ["> abc  de"]),
])
def test_wrap(items, width, max_lines, expected):
    indent = "> " if expected and expected[0].startswith(">") else "  "
    assert _wrap(items, width, max_lines, indent) == expected


def test_bar():
    assert _bar(1, 4, 8) == "━━──────" and _bar(9, 4, 4) == "━━━━"
    assert _bar(0, 0, 3) == "───" and _bar(1, 3, 4) == "━───"
    assert _bar(2, 3, 4) == "━━━─"


def test_rate_and_eta_from_the_clock(clock):
    display, _ = _quiet()
    display.start_task("s", total=100)
    assert display.rate() == 0.0 and display.eta() is None
    clock.now += 4.0
    display.advance(10)
    display.advance()
    display.advance(9)
    assert display.rate() == 5.0 and display.eta() == 16.0
    display.advance(90)  # past the total: nothing left, not negative
    assert display.eta() == 0.0


def test_plain_lines_exact(clock):
    display, buf = _quiet()
    with display:
        display.batch_done(0, 2)
        display.batch_start(Batch(0, (1, 2, 3), 11), 0, 2)
        display.start_task("stage 1/2", total=10)
        clock.now += 2.0
        display.advance(5)
        display.report(LOSSES, accuracy=0.25, weights=WEIGHTS)
        # earlier weights stay (x has none, yet the label says "weighted")
        display.report({"loss": 2.0, "x": 1.0})
        display.batch_summary(LOSSES, accuracy=0.5, teacher_accuracy=0.75, kept="the last")
        display.batch_done(1, 2)
    assert buf.getvalue().splitlines() == [
        "batch 1/2: 3 images, seed 11",
        "batch 1/2 stage 1/2 5/10 2.5 it/s ETA 0:00:02 loss 4.724 verifier 25.0% | "
        "weighted: bn-stats 1.605  tv-l2 0.2371  l2 0.03012  cross-entropy 0.0123  "
        "best loss 4.5",
        "batch 1/2 stage 1/2 5/10 2.5 it/s ETA 0:00:02 loss 2 | weighted: x 1",
        "batch 1/2 saved the last: loss 4.5 (last 4.724), teacher 75.0%, verifier 50.0%",
        "1/2 batches done",
    ]


def test_batch_summary_variants():
    display, buf = _quiet(accuracy_label="test")
    display.batch_summary()
    display.batch_summary({"total": 2.0, "best_total": 2.0})
    display.batch_summary({"loss": 3.0}, accuracy=0.125)
    display.batch_summary({"best_total": 1.0})
    display.batch_summary({}, teacher_accuracy=0.5)
    assert buf.getvalue().splitlines() == [
        "saved the lowest-loss iterate",
        "saved the lowest-loss iterate: loss 2",
        "saved the lowest-loss iterate: loss 3, test 12.5%",
        "saved the lowest-loss iterate: loss 1",
        "saved the lowest-loss iterate: teacher 50.0%",
    ]


def test_a_new_batch_hides_the_old_stage_and_total_wins_over_loss(clock):
    display = ProgressDisplay(console=Console(file=io.StringIO(), force_terminal=True))
    display.start_task("stage 1/1", total=10)
    display.report({"loss": 2.0, "total": 1.0})
    assert display.plain_line() == "stage 1/1 0/10 0.0 it/s ETA -:--:-- loss 1"
    display.batch_start(Batch(1, (1,), 0), 1, 2)
    assert display.render_lines(80) == [
        "batches " + "━" * 20 + "─" * 20 + " 1/2 done  ETA -:--:--"]


def test_title_keeps_a_description_naming_its_batch():
    display, _ = _quiet()
    display.batch_start(Batch(0, (1,), 0), 4, 9)
    display.start_task("batch 5/9 stage", total=1)
    assert display._title() == "batch 5/9 stage"
    display.start_task("", total=1)
    assert display._title() == "batch 5/9"
    fresh, _ = _quiet()
    fresh.start_task("steps", total=1)
    assert fresh._title() == "steps"


def _rendered(clock, widths, terms=LOSSES, batches=(3, 10), description="stage 1/2 (2x down)"):
    display = ProgressDisplay(console=Console(file=io.StringIO(), width=80, force_terminal=True))
    display.batch_done(1, batches[1])
    clock.now += 30.0
    display.batch_done(batches[0], batches[1])
    display.batch_start(Batch(batches[0], (1, 2), 7), batches[0], batches[1])
    display.start_task(description, total=2000)
    clock.now += 40.0
    display.advance(1200)
    display.report(terms, accuracy=0.938, weights=WEIGHTS)
    out = []
    for width in widths:
        out.append(f"--- width {width}")
        for line in display.render_lines(width):
            assert len(line) <= width
            out.append(line)
    return "\n".join(out) + "\n"


def test_live_lines_golden(clock):
    """The live display's lines at every width from wide to very narrow, exactly."""
    text = _rendered(clock, [160, 120, 100, 80, 70, 60, 50, 44, 40, 30, 20, 12])
    assert_golden("progress-live-lines", text)


def test_live_lines_every_width_golden(clock):
    """Every width from 10 to 125 columns: each boundary (figures dropped, the title beside
    the bar or below, the bar's room) lands at exactly one width."""
    text = _rendered(clock, range(10, 126))
    assert_golden("progress-live-every-width", text)


def test_live_lines_one_batch_and_no_stage(clock):
    text = _rendered(clock, [80, 40], terms={"total": 1.0}, batches=(0, 1), description="")
    assert_golden("progress-live-one-batch", text)
    display = ProgressDisplay(console=Console(file=io.StringIO(), force_terminal=True))
    assert display.render_lines(80) == []
    display.batch_done(0, 2)
    assert display.render_lines(80) == ["batches " + "─" * 40 + " 0/2 done  ETA -:--:--"]
    assert display.render_lines(34) == ["batches ──── 0/2 done  ETA -:--:--"]
    assert display.render_lines(33) == ["batches 0/2 done  ETA -:--:--"]


def test_live_mode_refreshes_instead_of_printing(clock):
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True)
    display = ProgressDisplay(console=console)
    assert display.plain is False and display._live is None
    with display:
        live = display._live
        assert live is not None and live.is_started
        assert live.refresh_per_second == 4 and live.transient is False
        assert live.console is console
        display.start_task("stage", total=4)
        display.report({"total": 1.0})
        display.batch_done(1, 2)  # not plain: no log line
    assert display._live is None and not live.is_started
    text = buf.getvalue()
    assert "1/2 batches done" not in text and "stage ─" in text and "loss 1 |" not in text
    # not a terminal: plain lines
    assert ProgressDisplay(console=Console(file=io.StringIO())).plain is True


def test_log_lines_are_literal_and_never_wrapped():
    buf = io.StringIO()
    display = ProgressDisplay(quiet=True, console=Console(file=buf, width=20))
    display.log("[bold]a very long line that does not fit in twenty columns[/bold]")
    assert buf.getvalue() == "[bold]a very long line that does not fit in twenty columns[/bold]\n"


def test_disabled_terminal_display_has_no_live():
    display = ProgressDisplay(console=Console(file=io.StringIO(), force_terminal=True),
                              enabled=False)
    with display:
        assert display._live is None


def test_default_console_is_stderr_and_quiet_console():
    display = ProgressDisplay()
    assert display.console.file is sys.stderr and display.accuracy_label == "verifier"
    console = quiet_console()
    assert console.file is sys.stderr and console.no_color is True
    assert console._highlight is False
