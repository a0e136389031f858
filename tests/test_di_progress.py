"""The progress display: plain lines in quiet mode, a live display on a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from invkit.pipeline import Batch
from invkit.progress import ProgressDisplay, format_losses


def test_format_losses_puts_totals_first():
    text = format_losses({"bn-stats": 2.5, "total": 1.25, "cross-entropy": 0.5}, accuracy=0.875)
    assert text == "total=1.25 bn-stats=2.5 cross-entropy=0.5 acc=87.5%"


def test_quiet_mode_prints_one_plain_line_per_report():
    buf = io.StringIO()
    with ProgressDisplay(quiet=True, console=Console(file=buf, force_terminal=True)) as p:
        p.batch_start(Batch(0, (1, 2), 7), 0, 3)
        p.start_task("stage 1/2", total=10)
        for _ in range(10):
            p.advance()
        p.report({"total": 1.0, "bn-stats": 0.5}, accuracy=0.5)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "batch 1/3: 2 images, seed 7"
    assert lines[1].startswith("stage 1/2 10/10 ")
    assert lines[1].endswith("it/s total=1 bn-stats=0.5 acc=50.0%")
    assert "\x1b[" not in buf.getvalue()  # no escape codes in logs


def test_live_display_shows_stage_iterations_and_losses():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160)
    with ProgressDisplay(console=console) as p:
        p.batch_done(0, 2)
        p.start_task("batch 0 stage 1/1", total=4)
        for _ in range(4):
            p.advance()
        p.report({"total": 3.0, "cross-entropy": 2.0})
        p.batch_done(1, 2)
    text = buf.getvalue()
    assert "batch 0 stage 1/1" in text and "4/4" in text and "it/s" in text
    assert "total=3 cross-entropy=2" in text and "batches" in text


def test_disabled_display_prints_nothing():
    buf = io.StringIO()
    with ProgressDisplay(console=Console(file=buf, force_terminal=True), enabled=False) as p:
        p.batch_start(Batch(0, (1,), 0), 0, 1)
        p.start_task("stage", total=1)
        p.advance()
        p.report({"total": 1.0})
        p.log("hello")
    assert buf.getvalue() == ""
