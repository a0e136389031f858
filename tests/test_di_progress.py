"""The progress display: plain lines in quiet mode, a live display that fits the terminal."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from invkit.pipeline import Batch
from invkit.progress import ProgressDisplay, format_losses, format_time, loss_terms

LOSSES = {"cross-entropy": 0.0123, "bn-stats": 32.1, "tv-l2": 790.5, "l2": 3012.2,
          "total": 4.724}
WEIGHTS = {"cross-entropy": 1.0, "bn-stats": 0.05, "tv-l2": 3e-4, "l2": 1e-5}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def screen_lines(text: str) -> list[str]:
    """What a terminal shows, line by line: escape codes gone, split at \\n and \\r."""
    return [line for line in re.split(r"[\r\n]", ANSI.sub("", text)) if line]


def test_format_losses_puts_totals_first():
    text = format_losses({"bn-stats": 2.5, "total": 1.25, "cross-entropy": 0.5}, accuracy=0.875)
    assert text == "total=1.25 bn-stats=2.5 cross-entropy=0.5 acc=87.5%"


def test_format_time_is_never_cut():
    assert format_time(0) == "0:00:00" and format_time(3725.4) == "1:02:05"
    assert format_time(100 * 3600) == "100:00:00" and format_time(None) == "-:--:--"


def test_loss_terms_are_weighted_and_largest_first():
    label, terms = loss_terms(LOSSES, WEIGHTS)
    assert label == "weighted"
    assert [name for name, _ in terms] == ["bn-stats", "tv-l2", "l2", "cross-entropy"]
    assert dict(terms) == pytest.approx({"bn-stats": 1.605, "tv-l2": 0.23715, "l2": 0.030122,
                                         "cross-entropy": 0.0123})
    assert loss_terms({"total": 1.0, "a": 2.0}) == ("", [("a", 2.0)])


def test_quiet_mode_prints_one_labelled_line_per_report():
    buf = io.StringIO()
    with ProgressDisplay(quiet=True, console=Console(file=buf, force_terminal=True)) as p:
        p.batch_done(0, 3)
        p.batch_start(Batch(0, (1, 2), 7), 0, 3)
        p.start_task("stage 1/2", total=10)
        p.advance(10)
        p.report({"total": 1.0, "bn-stats": 0.5}, accuracy=0.5)
        p.batch_summary({"total": 1.0, "best_total": 0.75}, accuracy=0.25, teacher_accuracy=1.0)
        p.batch_done(1, 3)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "batch 1/3: 2 images, seed 7"
    # Every figure labelled; 10 of 10 done, so the ETA is exactly zero.
    assert re.fullmatch(r"batch 1/3 stage 1/2 10/10 [0-9.]+ it/s ETA 0:00:00 loss 1 "
                        r"verifier 50.0% \| bn-stats 0.5", lines[1]), lines[1]
    assert lines[2] == ("batch 1/3 saved the lowest-loss iterate: loss 0.75 (last 1), "
                        "teacher 100.0%, verifier 25.0%")
    assert lines[3] == "1/3 batches done"
    assert len(lines) == 4
    assert "\x1b[" not in buf.getvalue()  # no escape codes in logs


def test_quiet_lines_show_weighted_terms():
    buf = io.StringIO()
    with ProgressDisplay(quiet=True, console=Console(file=buf)) as p:
        p.start_task("stage 1/1", total=4)
        p.advance(4)
        p.report(LOSSES, accuracy=0.938, weights=WEIGHTS)
    assert buf.getvalue().rstrip().endswith(
        "loss 4.724 verifier 93.8% | weighted: bn-stats 1.605  tv-l2 0.2371  l2 0.03012  "
        "cross-entropy 0.0123")


def _live_run(width: int) -> tuple[ProgressDisplay, str]:
    buf = io.StringIO()
    console = Console(width=width, file=buf, force_terminal=True)
    with ProgressDisplay(console=console) as p:
        p.batch_done(0, 2)
        p.batch_start(Batch(0, (1, 2), 7), 0, 2)
        p.start_task("stage 1/2 (2x down)", total=2000)
        p.advance(1200)
        p.report(LOSSES, accuracy=0.938, weights=WEIGHTS)
        shown = p.render_lines(width)
    return shown, buf.getvalue()


@pytest.mark.parametrize("width", [80, 120])
def test_live_display_fits_and_keeps_every_headline_figure(width):
    shown, output = _live_run(width)
    first = shown[1]  # below the batches line
    assert "━" in first and "1200/2000" in first and " it/s" in first
    assert re.search(r"ETA \d+:\d\d:\d\d(\s|$)", first)  # the whole time, never "0:00…"
    assert "loss 4.724" in first and "verifier 93.8%" in first
    assert shown[0].startswith("batches ") and "0/2 done" in shown[0]
    text = " ".join(shown)
    assert "batch 1/2 stage 1/2 (2x down)" in text
    assert "weighted: bn-stats 1.605" in text  # the largest term first
    assert "…" not in first
    for line in screen_lines(output) + shown:
        assert len(line) <= width, line
    assert "1200/2000" in output and "verifier 93.8%" in output


def test_live_display_puts_the_description_beside_the_bar_when_it_fits():
    shown, _ = _live_run(120)
    assert shown[1].startswith("batch 1/2 stage 1/2 (2x down) ━")
    assert shown[2].startswith("  weighted: bn-stats 1.605  tv-l2 0.2371")
    shown, _ = _live_run(80)
    assert shown[1].startswith("━")  # the bar first; the description moves below
    assert shown[2].startswith("  batch 1/2 stage 1/2 (2x down):  weighted: bn-stats 1.605")


def test_narrow_terminals_cut_terms_with_an_ellipsis():
    p = ProgressDisplay(console=Console(width=50, file=io.StringIO(), force_terminal=True))
    p.start_task("stage 1/1", total=10)
    p.advance(5)
    p.report({**LOSSES, **{f"extra-term-{i}": 1.0 for i in range(8)}}, accuracy=0.5)
    lines = p.render_lines(50)
    assert all(len(line) <= 50 for line in lines)
    assert len(lines) <= 3 and lines[-1].endswith("…")


def test_a_new_batch_or_stage_does_not_show_old_losses():
    p = ProgressDisplay(console=Console(width=80, file=io.StringIO(), force_terminal=True))
    p.batch_start(Batch(0, (1,), 0), 0, 2)
    p.start_task("stage 1/2", total=10)
    p.report({"total": 3.0, "bn-stats": 1.0}, accuracy=0.5)
    assert "loss 3" in " ".join(p.render_lines(80))
    p.start_task("stage 2/2", total=10)
    assert "loss" not in " ".join(p.render_lines(80)) and "verifier" not in p.plain_line()
    p.report({"total": 2.0}, accuracy=0.5)
    p.batch_start(Batch(1, (1,), 0), 1, 2)
    p.start_task("stage 1/2", total=10)
    assert "loss" not in p.plain_line() and p.plain_line().startswith("batch 2/2 stage 1/2 ")


def test_accuracy_label_for_distillation():
    buf = io.StringIO()
    with ProgressDisplay(quiet=True, console=Console(file=buf), accuracy_label="test") as p:
        p.start_task("distill a -> b", total=2)
        p.advance(2)
        p.report({"epoch": 1, "loss": 0.25, "train_agree": 0.5}, 0.75)
    assert re.fullmatch(r"distill a -> b 2/2 [0-9.]+ it/s ETA 0:00:00 loss 0.25 test 75.0% "
                        r"\| epoch 1  train_agree 0.5\n", buf.getvalue())


def test_disabled_display_prints_nothing():
    buf = io.StringIO()
    with ProgressDisplay(console=Console(file=buf, force_terminal=True), enabled=False) as p:
        p.batch_start(Batch(0, (1,), 0), 0, 1)
        p.start_task("stage", total=1)
        p.advance()
        p.report({"total": 1.0})
        p.batch_summary({"total": 1.0})
        p.log("hello")
    assert buf.getvalue() == ""


def test_batches_line_eta_counts_only_this_sessions_batches(monkeypatch):
    import invkit.progress as progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    display = ProgressDisplay(quiet=True, console=Console(file=io.StringIO()))
    display.batch_done(2, 10)     # resumed: 2 batches were done before this session
    now[0] = 110.0
    display.batch_done(4, 10)     # 2 batches in 10 s here, 6 to go: 30 s left
    (line,) = display.render_lines(80)
    assert line.startswith("batches ━") and line.endswith("4/10 done  ETA 0:00:30"), line
    assert len(line) <= 80
