"""Resume state (invkit.pipeline.state) directly: what run.json records, which batches
count as complete, and the exact message naming every changed setting."""

from __future__ import annotations

import json

import pytest

from invkit.errors import InvkitError
from invkit.pipeline.layout import Layout
from invkit.pipeline.plan import plan_batches, plan_fingerprint
from invkit.pipeline.state import _differences, _flatten, _read_state, settings_for, start


def _layout(tmp_path, fmt="png", shard_size=4, **plan):
    batches = plan_batches(num_classes=3, batch_size=2, images_per_class=2, **plan)
    return Layout(tmp_path / "run", batches, fmt=fmt, shard_size=shard_size, num_classes=3,
                  class_names=None)


def test_settings_record_identity_format_and_plan(tmp_path):
    layout = _layout(tmp_path, fmt="safetensors", shard_size=5)
    settings = settings_for({"method": "m", "out": tmp_path / "x", "nested": {"a": (1, 2)}}, layout)
    assert settings == {
        "version": 1,
        "config": {"method": "m", "out": str(tmp_path / "x"), "nested": {"a": [1, 2]}},
        "format": "safetensors", "shard_size": 5, "num_classes": 3, "num_batches": 3,
        "num_images": 6, "plan": plan_fingerprint(layout.batches),
    }
    # The shard size only defines a safetensors dataset.
    assert settings_for({}, _layout(tmp_path, fmt="png", shard_size=5))["shard_size"] is None


def test_start_writes_state_then_resume_finds_complete_batches(tmp_path):
    layout = _layout(tmp_path)
    settings = settings_for({"method": "m"}, layout)
    assert start(layout, settings, resume=False, overwrite=False) == set()
    assert json.loads((layout.state / "run.json").read_text()) == settings
    assert (layout.state / "batches").is_dir()

    # Batch 1 complete (record and its one file); batch 2's record names a missing file.
    (layout.out / "images/000").mkdir(parents=True)
    (layout.out / "images/000/a.png").write_bytes(b"x")
    layout.record(1).write_text(json.dumps({"rows": [{"file": "images/000/a.png"}]}))
    layout.record(2).write_text(json.dumps({"rows": [{"file": "images/000/a.png"},
                                                     {"file": "images/001/b.png"}]}))
    assert start(layout, settings, resume=True, overwrite=False) == {1}
    # Resume leaves the recorded state as it was.
    assert json.loads((layout.state / "run.json").read_text()) == settings


def test_resume_without_state_starts_the_run(tmp_path):
    layout = _layout(tmp_path)
    settings = settings_for({"method": "m"}, layout)
    assert start(layout, settings, resume=True, overwrite=False) == set()
    assert json.loads((layout.state / "run.json").read_text()) == settings


def test_overwrite_rewrites_the_state(tmp_path):
    layout = _layout(tmp_path)
    start(layout, settings_for({"method": "old"}, layout), resume=False, overwrite=False)
    new = settings_for({"method": "new"}, layout)
    assert start(layout, new, resume=False, overwrite=True) == set()
    assert json.loads((layout.state / "run.json").read_text()) == new


def test_resume_refuses_changed_settings_naming_each(tmp_path):
    layout = _layout(tmp_path)
    start(layout, settings_for({"method": "m", "lr": 0.1}, layout), resume=False, overwrite=False)
    changed = _layout(tmp_path, seed=7)
    with pytest.raises(InvkitError) as error:
        start(changed, settings_for({"method": "m", "lr": 0.2}, changed), resume=True,
              overwrite=False)
    old_plan = plan_fingerprint(layout.batches)
    new_plan = plan_fingerprint(changed.batches)
    assert str(error.value) == (
        f"cannot resume the run in {str(layout.out)!r}: its settings differ from this "
        f"command's: lr (0.1 -> 0.2); batch plan ({old_plan} -> {new_plan}) (rerun with the "
        "original settings, or use --overwrite to start again)")


@pytest.mark.parametrize("text, detail", [("[1, 2]", "not a JSON object"),
                                          ("{broken", "Expecting property name enclosed in "
                                                      "double quotes: line 1 column 2 (char 1)")])
def test_damaged_state_is_one_line(tmp_path, text, detail):
    # start() reaches it only if the state is damaged after prepare_output_dir read it.
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(InvkitError) as error:
        _read_state(path)
    assert str(error.value) == (
        f"cannot resume: the run state {str(path)!r} is damaged ({detail}); "
        "use --overwrite to start again")
    path.write_text('{"plan": "aa"}')
    assert _read_state(path) == {"plan": "aa"}


@pytest.mark.parametrize("record", ["{not json", '{"no_rows": []}', '{"rows": [{"name": 1}]}',
                                    '{"rows": 3}'])
def test_damaged_batch_records_are_redone(tmp_path, record):
    layout = _layout(tmp_path)
    settings = settings_for({}, layout)
    start(layout, settings, resume=False, overwrite=False)
    layout.record(0).write_text(record)
    (layout.out / "images").mkdir()
    (layout.out / "images" / "a.png").write_bytes(b"x")
    layout.record(1).write_text(json.dumps({"rows": [{"file": "images/a.png"}]}))
    assert start(layout, settings, resume=True, overwrite=False) == {1}


def test_safetensors_batch_is_complete_when_pending_or_packed(tmp_path):
    layout = _layout(tmp_path, fmt="safetensors")
    settings = settings_for({}, layout)
    start(layout, settings, resume=False, overwrite=False)
    rows = {"rows": [{"file": "shards/shard_00000.safetensors"}]}
    for index in range(3):
        layout.record(index).write_text(json.dumps(rows))
    layout.pending(2).write_bytes(b"x")          # waiting in state/ to be packed
    assert start(layout, settings, resume=True, overwrite=False) == {2}
    layout.shard(0).parent.mkdir()
    layout.shard(0).write_bytes(b"x")            # packed: every file it names exists
    assert start(layout, settings, resume=True, overwrite=False) == {0, 1, 2}


def test_differences_flatten_config_and_show_unset_values():
    old = {"version": 1, "format": "png", "plan": "aa", "config": {"a": {"b": 1, "c": "x"}, "e": {}}}
    new = {"version": 2, "format": "png", "plan": "aa",
           "config": {"a": {"b": 2}, "d": [1, "y"], "e": {}, "s": None}}
    assert _differences(old, new) == [
        "a.b (1 -> 2)", "a.c (x -> <unset>)", "d (<unset> -> [1, \"y\"])", "s (<unset> -> null)"]
    assert _differences(old, old) == []
    assert _differences({"plan": "aa"}, {"plan": "bb", "config": None}) == ["batch plan (aa -> bb)"]


def test_flatten_keeps_empty_dicts_and_prefixes():
    assert _flatten({"a": {"b": {"c": 1}}, "e": {}, "f": 2}, "p.") == {
        "p.a.b.c": 1, "p.e": {}, "p.f": 2}


def test_plan_fingerprint_is_the_short_sha256_of_the_plan():
    import hashlib

    from invkit.pipeline.plan import Batch

    plan = [Batch(0, (0, 1), 5), Batch(1, (2,), 9)]
    text = b"[[0, [0, 1], 5], [1, [2], 9]]"
    assert plan_fingerprint(plan) == hashlib.sha256(text).hexdigest()[:16]
    assert len(plan_fingerprint(plan)) == 16


def test_differences_skip_only_the_version_and_show_null_against_unset():
    old = {"version": 1, "config": {"t": None, "zeta": 1}}
    new = {"version": 2, "config": {"zeta": 2}}
    # "zeta" sorts after "version": the version is skipped, not the end of the comparison.
    assert _differences(old, new) == ["t (null -> <unset>)", "zeta (1 -> 2)"]
