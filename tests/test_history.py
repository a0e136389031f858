"""losses.csv: exact rows, survival of a kill, resume without duplicates; losses.png; TensorBoard."""

from __future__ import annotations

import importlib.util

import pytest

from invkit.errors import InvkitError
from invkit.history import (
    LossHistory, TensorBoardSink, checkpoint_row, merge, plot, read_rows, term_weights,
)

WEIGHTS = {"cross-entropy": 1.0, "bn-stats": 0.05}
HEADER = ("batch,stage,iteration,lr,cross-entropy,bn-stats,cross-entropy_weighted,"
          "bn-stats_weighted,total,best_total,verifier_accuracy")


def checkpoint(history, batch, iteration, total, accuracy=None, stage=1):
    return history.append(batch=batch, stage=stage, iteration=iteration, lr=0.1,
                          losses={"cross-entropy": 0.5, "bn-stats": 20.0, "total": total},
                          accuracy=accuracy)


def test_rows_are_exact(tmp_path):
    path = tmp_path / "losses.csv"
    with LossHistory(path, weights=WEIGHTS) as history:
        history.start_batch(0)
        checkpoint(history, 0, 100, 1.5, accuracy=0.25)
        checkpoint(history, 0, 200, 1.25, stage=2)
    assert path.read_text() == (
        HEADER + "\n"
        "0,1,100,0.1,0.5,20.0,0.5,1.0,1.5,,0.25\n"
        "0,2,200,0.1,0.5,20.0,0.5,1.0,1.25,,\n"
    )
    header, rows = read_rows(path)
    assert ",".join(header) == HEADER and rows[1]["stage"] == "2"


def test_checkpoint_row_and_term_weights():
    from invkit.priors import CrossEntropy, L2Norm

    assert term_weights(CrossEntropy() + 1e-5 * L2Norm()) == {"cross-entropy": 1.0, "l2": 1e-5}
    row = checkpoint_row(batch=2, stage=1, iteration=7, lr=0.5, weights={"l2": 0.1},
                         losses={"l2": 4.0, "total": 0.4, "best_total": 0.3}, accuracy=1.0)
    assert row == {"batch": 2, "stage": 1, "iteration": 7, "lr": 0.5, "l2": 4.0,
                   "l2_weighted": 0.4, "total": 0.4, "best_total": 0.3, "verifier_accuracy": 1.0}


def test_resume_drops_a_redone_batch_and_keeps_finished_ones(tmp_path):
    path = tmp_path / "losses.csv"
    first = LossHistory(path, weights=WEIGHTS)
    first.start_batch(0)
    checkpoint(first, 0, 100, 3.0)
    checkpoint(first, 0, 200, 2.0)
    first.start_batch(1)
    checkpoint(first, 1, 100, 9.0)  # then the run is killed mid-batch 1
    first.close()
    with path.open("a") as handle:
        handle.write("1,1,200,0.1,0.5")  # a row torn by the kill

    again = LossHistory(path, weights=WEIGHTS, resume=True)
    assert path.read_text().endswith("\n")  # the torn row is gone at once
    again.start_batch(1)  # batch 1 is redone from the start
    checkpoint(again, 1, 100, 8.0)
    checkpoint(again, 1, 200, 7.0)
    again.close()
    _, rows = read_rows(path)
    assert [(r["batch"], r["iteration"], r["total"]) for r in rows] == [
        ("0", "100", "3.0"), ("0", "200", "2.0"), ("1", "100", "8.0"), ("1", "200", "7.0")]

    LossHistory(path, weights=WEIGHTS, resume=False).close()  # a fresh run starts empty
    assert not path.exists()


def test_a_new_term_widens_the_header(tmp_path):
    path = tmp_path / "losses.csv"
    history = LossHistory(path)
    history.append(batch=0, stage=1, iteration=1, lr=0.1, losses={"a": 1.0, "total": 1.0})
    history.append(batch=0, stage=1, iteration=2, lr=0.1, losses={"a": 2.0, "b": 3.0,
                                                                    "total": 5.0})
    assert path.read_text().splitlines() == [
        "batch,stage,iteration,lr,a,b,total,best_total,verifier_accuracy",
        "0,1,1,0.1,1.0,,1.0,,", "0,1,2,0.1,2.0,3.0,5.0,,"]


def test_merge_orders_by_batch_and_iteration(tmp_path):
    for rank, batches in ((0, (0, 2)), (1, (1,))):
        with LossHistory(tmp_path / f"losses.rank{rank}.csv", weights=WEIGHTS) as history:
            for batch in batches:
                checkpoint(history, batch, 100, float(batch))
    merge([tmp_path / "losses.rank0.csv", tmp_path / "losses.rank1.csv"], tmp_path / "losses.csv")
    _, rows = read_rows(tmp_path / "losses.csv")
    assert [r["batch"] for r in rows] == ["0", "1", "2"]


def test_not_a_history_is_a_user_error(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InvkitError, match="not an invkit loss history"):
        read_rows(tmp_path / "x.csv")


def _history(tmp_path, batches=2):
    path = tmp_path / "losses.csv"
    with LossHistory(path, weights=WEIGHTS) as history:
        for batch in range(batches):
            for i in range(1, 4):
                checkpoint(history, batch, 100 * i, 3.0 / i, accuracy=0.1 * i)
    return path


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="needs the plot extra (matplotlib)")
@pytest.mark.parametrize("batches", [2, 12])
def test_plot_writes_a_png(tmp_path, batches):
    from PIL import Image

    out = plot(_history(tmp_path, batches), tmp_path / "losses.png")
    assert out == tmp_path / "losses.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 600  # 3 panels across


def test_plot_without_matplotlib_is_a_note_not_an_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    notes = []
    assert plot(_history(tmp_path), tmp_path / "losses.png", log=notes.append) is None
    assert notes == ["losses.png skipped: matplotlib is not installed "
                     "(pip install 'invkit[plot]')"]
    assert not (tmp_path / "losses.png").exists()


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(InvkitError, match=r"pip install 'invkit\[tensorboard\]'"):
        LossHistory(tmp_path / "losses.csv", tensorboard=tmp_path / "tb")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="needs the tensorboard extra")
def test_tensorboard_gets_the_same_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with LossHistory(tmp_path / "losses.csv", weights=WEIGHTS,
                     tensorboard=tmp_path / "tb") as history:
        for batch in range(2):
            history.start_batch(batch)
            checkpoint(history, batch, 100, 1.5 + batch, accuracy=0.5)
            checkpoint(history, batch, 200, 1.25 + batch)
    events = EventAccumulator(str(tmp_path / "tb" / "batch_00001")).Reload()
    assert [(s.step, s.value) for s in events.Scalars("loss/total")] == [(100, 2.5), (200, 2.25)]
    assert [s.value for s in events.Scalars("weighted/bn-stats")] == [1.0, 1.0]
    assert [s.value for s in events.Scalars("verifier_accuracy")] == [0.5]
    assert isinstance(TensorBoardSink(tmp_path / "tb2"), TensorBoardSink)


def test_import_invkit_stays_free_of_torch():
    import subprocess
    import sys

    code = ("import sys, invkit; invkit.LossHistory; invkit.next_free_dir; "
            "assert 'torch' not in sys.modules and 'rich' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
