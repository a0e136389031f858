"""invkit.history pinned exactly: rows, header order, torn lines, merge, panels, TensorBoard tags.

Each test states a contract a caller relies on (exact cells, exact messages, exact tags), so a
changed literal, comparison or argument in invkit/history.py makes one of them fail.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from invkit.errors import InvkitError
from invkit.history import (
    PLOT_EXTRA_NOTE, TENSORBOARD_MISSING, LossHistory, TensorBoardSink, _cell, _draw, _order,
    _panels, checkpoint_row, merge, plot, read_rows, require_tensorboard, term_weights,
)

HEAD = "batch,stage,iteration,lr"
TAIL = "total,best_total,verifier_accuracy"


def test_term_weights_from_prior_names_or_labels():
    """Without labels() the prior names label the terms; weights become floats."""
    terms = [(2, SimpleNamespace(name="a")), (0.5, SimpleNamespace(name="b"))]
    weights = term_weights(terms)
    assert weights == {"a": 2.0, "b": 0.5} and type(weights["a"]) is float

    class Labelled(list):
        def labels(self):
            return ["x", "y"]

    assert term_weights(Labelled(terms)) == {"x": 2.0, "y": 0.5}


def test_checkpoint_row_types_and_weighted_terms():
    """Counts are ints, figures floats; only weighted terms get a _weighted column."""
    row = checkpoint_row(batch=3.0, stage=2.0, iteration=7.0, lr=1, accuracy=1,
                         losses={"a": 2, "b": 3, "best_total": 4, "total": 5},
                         weights={"a": 0.5, "z": 9.0})
    assert row == {"batch": 3, "stage": 2, "iteration": 7, "lr": 1.0, "a": 2.0, "b": 3.0,
                   "a_weighted": 1.0, "total": 5.0, "best_total": 4.0,
                   "verifier_accuracy": 1.0}
    assert [type(row[k]) for k in row] == [int, int, int, float, float, float, float, float,
                                           float, float]
    assert list(row) == ["batch", "stage", "iteration", "lr", "a", "b", "a_weighted", "total",
                         "best_total", "verifier_accuracy"]
    empty = checkpoint_row(batch=0, stage=1, iteration=1, lr=0.1, losses={})
    assert empty["total"] is None and empty["best_total"] is None
    assert empty["verifier_accuracy"] is None


def test_cells_round_trip_exactly():
    assert _cell(None) == "" and _cell(0.1 + 0.2) == "0.30000000000000004"
    assert _cell(3) == "3" and _cell(1e-5) == "1e-05" and _cell(0.0) == "0.0"


def test_header_order():
    """Leading keys, terms, weighted terms, then the totals; duplicates once."""
    assert _order(["total", "b_weighted", "a", "batch", "a", "lr", "c",
                   "verifier_accuracy", "a_weighted"]) == [
        "batch", "stage", "iteration", "lr", "a", "c", "b_weighted", "a_weighted",
        "total", "best_total", "verifier_accuracy"]
    assert _order([]) == ["batch", "stage", "iteration", "lr", "total", "best_total",
                          "verifier_accuracy"]


def test_read_rows_drops_torn_and_short_rows(tmp_path):
    path = tmp_path / "losses.csv"
    path.write_text(f"{HEAD},total\n0,1,1,0.1,2.0\n0,1,2,0.1\n0,1,3,0.1,1.0\n0,1,4,0.")
    header, rows = read_rows(path)
    assert header == ["batch", "stage", "iteration", "lr", "total"]
    assert rows == [{"batch": "0", "stage": "1", "iteration": "1", "lr": "0.1", "total": "2.0"},
                    {"batch": "0", "stage": "1", "iteration": "3", "lr": "0.1", "total": "1.0"}]
    path.write_text("")
    assert read_rows(path) == ([], [])
    path.write_text("batch,sta")  # a kill while the header was written
    assert read_rows(path) == ([], [])
    path.write_text(f"{HEAD}\n")
    assert read_rows(path) == (["batch", "stage", "iteration", "lr"], [])


def test_not_a_history_message_is_exact(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("batch,stage,iter,lr,total\n")
    with pytest.raises(InvkitError) as err:
        read_rows(path)
    assert str(err.value) == (f"{str(path)!r} is not an invkit loss history "
                              "(its header starts 'batch,stage,iter,lr')")
    path.write_text("batch,stage,iteration\n")  # too short is not a history either
    with pytest.raises(InvkitError) as err:
        read_rows(path)
    assert str(err.value).endswith("(its header starts 'batch,stage,iteration')")


def test_appends_are_one_fsynced_write_to_the_same_file(tmp_path, monkeypatch):
    """Same columns: the row is appended in place (no rewrite), one write, then fsync."""
    path = tmp_path / "losses.csv"
    history = LossHistory(path, {"a": 0.5})
    history.append(batch=0, stage=1, iteration=1, lr=0.1, losses={"a": 2.0, "total": 1.0})
    inode = os.stat(path).st_ino
    calls = []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(os, "write", lambda fd, data: calls.append(("write", data))
                        or real_write(fd, data))
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync",)) or real_fsync(fd))
    row = history.append(batch=0, stage=1, iteration=2, lr=0.1, losses={"a": 4.0, "total": 2.0},
                         accuracy=0.5)
    assert calls == [("write", b"0,1,2,0.1,4.0,2.0,2.0,,0.5\n"), ("fsync",)]
    assert os.stat(path).st_ino == inode
    assert row["a_weighted"] == 2.0
    # weights= of one append replaces the writer's weights for that row
    history.append(batch=0, stage=1, iteration=3, lr=0.1, losses={"a": 4.0, "total": 2.0},
                   weights={"a": 0.25})
    history.close()
    assert path.read_text() == (f"{HEAD},a,a_weighted,{TAIL}\n0,1,1,0.1,2.0,1.0,1.0,,\n"
                                "0,1,2,0.1,4.0,2.0,2.0,,0.5\n0,1,3,0.1,4.0,1.0,2.0,,\n")
    assert history.header == [*HEAD.split(","), "a", "a_weighted", *TAIL.split(",")]


def test_resume_keeps_rows_and_a_fresh_run_deletes_them(tmp_path):
    path = tmp_path / "losses.csv"
    with LossHistory(path) as history:
        for batch in (0, 1):
            history.start_batch(batch)
            history.append(batch=batch, stage=1, iteration=1, lr=0.1, losses={"total": 1.0})
    text = path.read_text()
    again = LossHistory(path)  # resume=True is the default
    assert again.header == [*HEAD.split(","), *TAIL.split(",")] and path.read_text() == text
    inode = os.stat(path).st_ino
    again.start_batch(2)  # a batch with no rows: the file is left alone
    assert os.stat(path).st_ino == inode
    again.start_batch(0)  # batch 0 redone: its rows go, batch 1's stay
    assert path.read_text() == f"{HEAD},{TAIL}\n1,1,1,0.1,1.0,,\n"
    again.append(batch=0, stage=1, iteration=1, lr=0.1, losses={"total": 5.0})
    again.start_batch(1)
    inode = os.stat(path).st_ino
    again.start_batch(1)  # the second call finds nothing more to drop: no rewrite
    assert os.stat(path).st_ino == inode
    assert path.read_text() == f"{HEAD},{TAIL}\n0,1,1,0.1,5.0,,\n"
    again.start_batch(0)  # redone again in this session: the rows it appended go too
    assert path.read_text() == f"{HEAD},{TAIL}\n"
    fresh = LossHistory(path, resume=False)
    assert not path.exists() and fresh.header == []
    fresh.append(batch=4, stage=1, iteration=1, lr=0.1, losses={"total": 1.0})
    assert path.read_text() == f"{HEAD},{TAIL}\n4,1,1,0.1,1.0,,\n"


def test_torn_line_is_dropped_on_open_and_complete_file_not_rewritten(tmp_path):
    path = tmp_path / "losses.csv"
    path.write_text(f"{HEAD},{TAIL}\n0,1,1,0.1,1.0,,\n0,1,2")
    LossHistory(path)
    assert path.read_text() == f"{HEAD},{TAIL}\n0,1,1,0.1,1.0,,\n"
    inode = os.stat(path).st_ino
    LossHistory(path)
    assert os.stat(path).st_ino == inode


def test_an_empty_file_left_by_a_kill_is_resumed(tmp_path):
    path = tmp_path / "losses.csv"
    path.write_bytes(b"")
    history = LossHistory(path)
    assert path.read_bytes() == b"" and history.header == []
    history.append(batch=0, stage=1, iteration=1, lr=0.1, losses={"total": 1.0})
    assert path.read_text() == f"{HEAD},{TAIL}\n0,1,1,0.1,1.0,,\n"


def test_merge_sorts_numerically_and_fills_missing_columns(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    with LossHistory(a) as history:
        history.append(batch=10, stage=1, iteration=5, lr=0.1, losses={"x": 1.0, "total": 1.0})
        history.append(batch=2, stage=1, iteration=20, lr=0.1, losses={"x": 1.0, "total": 2.0})
    with LossHistory(b) as history:
        history.append(batch=2, stage=1, iteration=3, lr=0.1, losses={"y": 1.0, "total": 3.0})
    out = merge([a, tmp_path / "missing.csv", b], tmp_path / "m.csv")
    assert out == tmp_path / "m.csv"
    assert out.read_text() == (f"{HEAD},x,y,{TAIL}\n2,1,3,0.1,,1.0,3.0,,\n"
                               "2,1,20,0.1,1.0,,2.0,,\n10,1,5,0.1,1.0,,1.0,,\n")
    assert merge([tmp_path / "none.csv"], tmp_path / "e.csv").read_text() == f"{HEAD},{TAIL}\n"


def _rows(*values):
    keys = ("batch", "iteration", "v")
    return [dict(zip(keys, map(str, v))) for v in values]


def test_panels_titles_weights_and_order():
    header = [*HEAD.split(","), "ce", "tv", "bn", "ce_weighted", "tv_weighted", *TAIL.split(",")]
    rows = [{"batch": "0", "stage": "1", "iteration": "1", "lr": "0.1", "ce": "", "tv": "2.0",
             "bn": "", "ce_weighted": "0", "tv_weighted": "0.5", "total": "1",
             "best_total": "1", "verifier_accuracy": ""},
            {"batch": "0", "stage": "1", "iteration": "2", "lr": "0.1", "ce": "4.0", "tv": "",
             "bn": "", "ce_weighted": "1.0", "tv_weighted": "", "total": "1",
             "best_total": "1", "verifier_accuracy": "0.5"}]
    assert _panels(header, rows) == [
        ("ce", "ce (weight 0.25)"), ("tv", "tv (weight 0.25)"),
        ("total", "total (weighted sum)"), ("verifier_accuracy", "verifier accuracy"),
        ("lr", "learning rate")]
    # a term whose value is 0 where it is weighted has no weight in its title
    zero = [dict(rows[0], ce_weighted="0.0")]
    assert _panels(header, zero)[0] == ("tv", "tv (weight 0.25)")
    assert ("ce", "ce") in _panels(header, [dict(rows[0], ce="0.0", ce_weighted="1")])
    assert _panels(header, []) == []
    # a weighted column with no value (e.g. the weight came later): no weight in the title
    assert ("ce", "ce") in _panels(header, [dict(rows[1], ce_weighted="")])


def _axes():
    pytest.importorskip("matplotlib", reason="needs the plot extra (matplotlib)")
    from matplotlib.figure import Figure

    return Figure().add_subplot()


def test_draw_one_line_per_batch_sorted_with_legend_and_log_scale():
    axes = _axes()
    _draw(axes, _rows((0, 200, 1.0), (0, 100, 4.0), (1, 100, 2.0), (1, 200, ""), (2, 100, 3.0)),
          "v")
    got = [(line.get_label(), list(line.get_xdata()), list(line.get_ydata()),
            line.get_linewidth()) for line in axes.get_lines()]
    assert got == [("batch 0", [100, 200], [4.0, 1.0], 1.0), ("batch 1", [100], [2.0], 1.0),
                   ("batch 2", [100], [3.0], 1.0)]
    assert axes.get_legend() is not None and axes.get_yscale() == "log"
    assert axes.get_legend().get_texts()[0].get_fontsize() == 6


def test_draw_single_batch_no_legend_and_linear_unless_positive_and_varying():
    for values, scale in (((1.0, 2.0), "log"), ((0.0, 2.0), "linear"), ((2.0, 2.0), "linear"),
                          ((-1.0, 2.0), "linear")):
        axes = _axes()
        _draw(axes, _rows((0, 1, values[0]), (0, 2, values[1])), "v")
        assert axes.get_legend() is None and axes.get_yscale() == scale, values
    axes = _axes()
    _draw(axes, [{"batch": "0", "iteration": "1", "verifier_accuracy": "0.5"},
                 {"batch": "0", "iteration": "2", "verifier_accuracy": "1.0"}],
          "verifier_accuracy")
    assert axes.get_yscale() == "linear"
    axes = _axes()
    _draw(axes, [], "v")
    assert axes.get_lines() == [] and axes.get_yscale() == "linear"


@pytest.mark.parametrize("batches", [8, 9])
def test_draw_mean_band_from_nine_batches(batches):
    axes = _axes()
    rows = [r for b in range(batches) for r in _rows((b, 1, b + 1.0), (b, 2, 2 * (b + 1.0)))]
    _draw(axes, rows, "v")
    lines = axes.get_lines()
    if batches == 8:
        assert len(lines) == 8 and axes.get_legend() is not None
        return
    (line,) = lines
    assert line.get_label() == "mean of 9 batches" and line.get_linewidth() == 1.0
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == [5.0, 10.0]
    (band,) = axes.collections
    vertices = band.get_paths()[0].vertices.tolist()
    assert [1.0, 1.0] in vertices and [2.0, 2.0] in vertices
    assert [1.0, 9.0] in vertices and [2.0, 18.0] in vertices
    assert band.get_alpha() == 0.25 and list(band.get_linewidth()) == [0.0]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["mean of 9 batches"]


def test_plot_layout_titles_and_size(tmp_path, monkeypatch):
    """Panels three across, 420x280 px each, titled, the iteration on every x axis."""
    pytest.importorskip("matplotlib", reason="needs the plot extra (matplotlib)")
    import matplotlib.figure
    from PIL import Image

    made = []

    class Recording(matplotlib.figure.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def subplots_adjust(self, **kwargs):
            self.adjusted = kwargs
            super().subplots_adjust(**kwargs)

    monkeypatch.setattr(matplotlib.figure, "Figure", Recording)
    path = tmp_path / "losses.csv"
    with LossHistory(path, {"a": 0.5}) as history:
        history.append(batch=0, stage=1, iteration=1, lr=0.1, losses={"a": 2.0, "total": 1.0},
                       accuracy=0.5)
    out = plot(path, tmp_path / "p.png")
    assert out == tmp_path / "p.png"
    (figure,) = made
    assert list(figure.get_size_inches()) == pytest.approx([12.6, 5.6])
    assert figure.adjusted == pytest.approx(dict(left=0.22 / 3, right=0.98, bottom=0.5 / 5.6,
                                                 top=1 - 0.3 / 5.6, wspace=0.35, hspace=0.6))
    assert [a.get_title() for a in figure.axes] == [
        "a (weight 0.5)", "total (weighted sum)", "verifier accuracy", "learning rate"]
    assert [a.get_subplotspec().num1 for a in figure.axes] == [0, 1, 2, 3]
    assert {a.get_xlabel() for a in figure.axes} == {"iteration"}
    assert {a.title.get_fontsize() for a in figure.axes} == {9}
    assert {a.xaxis.label.get_fontsize() for a in figure.axes} == {8}
    assert {a.xaxis.get_major_ticks()[0].label1.get_fontsize() for a in figure.axes} == {7}
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1260, 560)

    made.clear()
    path.write_text(f"{HEAD},total\n0,1,1,,1.0\n")
    plot(path, tmp_path / "q.png")
    assert list(made[0].get_size_inches()) == pytest.approx([4.2, 2.8])
    assert made[0].adjusted["left"] == pytest.approx(0.22)


def test_plot_with_no_checkpoints_says_so(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="needs the plot extra (matplotlib)")
    path = tmp_path / "losses.csv"
    path.write_text(f"{HEAD},{TAIL}\n")
    notes = []
    assert plot(path, tmp_path / "p.png", log=notes.append) is None
    assert notes == [f"losses.png skipped: {str(path)!r} holds no checkpoints yet"]
    assert plot(path, tmp_path / "p.png") is None
    assert capsys.readouterr().err == notes[0] + "\n"
    assert not (tmp_path / "p.png").exists()


def test_plot_without_matplotlib_goes_to_stderr_by_default(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert plot(tmp_path / "none.csv", tmp_path / "p.png") is None
    assert capsys.readouterr().err == PLOT_EXTRA_NOTE + "\n"
    assert PLOT_EXTRA_NOTE == ("losses.png skipped: matplotlib is not installed "
                               "(pip install 'invkit[plot]')")


def test_tensorboard_missing_message_is_exact(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(InvkitError) as err:
        require_tensorboard()
    assert str(err.value) == TENSORBOARD_MISSING == (
        "--tensorboard needs the tensorboard package: pip install 'invkit[tensorboard]'")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def _scalars(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory)).Reload()
    return {tag: [(s.step, s.value) for s in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_tensorboard_tags_steps_and_one_run_per_batch(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra")
    log_dir = tmp_path / "tb"
    with LossHistory(tmp_path / "losses.csv", {"ce": 0.5}, tensorboard=log_dir) as history:
        history.start_batch(3)
        sink = history.tensorboard
        writer = sink._writer
        history.start_batch(3)  # the same batch again: the same writer
        assert sink._writer is writer and sink._batch == 3
        history.append(batch=3, stage=2, iteration=7, lr=0.25,
                       losses={"ce": 2.0, "total": 1.0, "best_total": 0.75}, accuracy=0.5)
        history.append(batch=12, stage=1, iteration=1, lr=0.5, losses={"ce": 1.0})
    assert sink._writer is None and sink._batch is None
    assert sorted(p.name for p in log_dir.iterdir()) == ["batch_00003", "batch_00012"]
    assert _scalars(log_dir / "batch_00003") == {
        "loss/ce": [(7, 2.0)], "weighted/ce": [(7, 1.0)], "loss/total": [(7, 1.0)],
        "loss/best_total": [(7, 0.75)], "lr": [(7, 0.25)], "verifier_accuracy": [(7, 0.5)]}
    assert _scalars(log_dir / "batch_00012") == {
        "loss/ce": [(1, 1.0)], "weighted/ce": [(1, 0.5)], "lr": [(1, 0.5)]}


def test_tensorboard_append_is_flushed_before_close(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra")
    sink = TensorBoardSink(str(tmp_path / "tb"))
    assert sink.log_dir == tmp_path / "tb" and sink._writer is None and sink._batch is None
    sink.append({"batch": "1", "stage": 1, "iteration": "5", "lr": 1, "total": None})
    assert _scalars(tmp_path / "tb" / "batch_00001") == {"lr": [(5, 1.0)]}
    sink.close()
    sink.close()  # twice is harmless
