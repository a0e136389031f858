"""Resume state: what a run directory holds about the run that wrote it.

``state/run.json`` holds the settings that define the dataset (the run's identity, the
format and the plan's fingerprint); ``state/batches/NNNNN.json`` is written, atomically
and last, when a batch's images are all on disk, so a batch is complete exactly when its
record exists. ``--resume`` compares the identity and refuses any difference, naming
every setting that differs with its full old and new values.

Example:
    >>> from pathlib import Path
    >>> from invkit.pipeline.plan import plan_batches
    >>> plan = plan_batches(num_classes=10, batch_size=4, images_per_class=1)
    >>> layout = Layout(Path("out"), plan, fmt="png", shard_size=1024, num_classes=10,
    ...                 class_names=None)
    >>> identity = {"method": "example"}      # a run's identity, as a dict
    >>> start(layout, settings_for(identity, layout), resume=True, overwrite=False)
    set()
"""

from __future__ import annotations

import json
from typing import Any

from invkit.errors import InvkitError
from invkit.output import prepare_output_dir, to_jsonable, write_json
from invkit.pipeline.layout import Layout
from invkit.pipeline.plan import plan_fingerprint

STATE_VERSION = 1
#: How a setting only one side has is shown when settings differ.
_UNSET = "<unset>"


def settings_for(config: dict, layout: Layout) -> dict:
    """What ``state/run.json`` records: the identity, the format and the plan."""
    return {
        "version": STATE_VERSION,
        "config": to_jsonable(config),
        "format": layout.fmt,
        "shard_size": layout.shard_size if layout.fmt == "safetensors" else None,
        "num_classes": layout.num_classes,
        "num_batches": len(layout.batches),
        "num_images": layout.total_images,
        "plan": plan_fingerprint(layout.batches),
    }


def start(layout: Layout, settings: dict, *, resume: bool, overwrite: bool) -> set[int]:
    """Prepare the directory (rank 0 only); return the indices of batches already complete."""
    out = prepare_output_dir(layout.out, overwrite=overwrite, resume=resume)
    state_file = layout.state / "run.json"
    if resume and state_file.exists():
        previous = _read_state(state_file)
        differences = _differences(previous, settings)
        if differences:
            raise InvkitError(
                f"cannot resume the run in {str(out)!r}: its settings differ from this command's: "
                + "; ".join(differences)
                + " (rerun with the original settings, or use --overwrite to start again)"
            )
    else:  # (prepare_output_dir refused a non-empty directory that holds no run)
        write_json(state_file, settings)
    (layout.state / "batches").mkdir(exist_ok=True)  # state/ holds run.json by now
    return {b.index for b in layout.batches if _complete(layout, b.index)}


def _read_state(path) -> dict:
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        return state
    except (OSError, ValueError) as error:
        raise InvkitError(f"cannot resume: the run state {str(path)!r} is damaged ({error}); "
                          "use --overwrite to start again") from None


def _complete(layout: Layout, index: int) -> bool:
    """A batch whose record is readable and whose files all exist (damaged ones are redone)."""
    path = layout.record(index)
    if not path.exists():
        return False
    try:
        record = json.loads(path.read_text())
        files = {row["file"] for row in record["rows"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    # Shards are packed at the end; before that a batch's images wait in state/.
    if layout.fmt == "safetensors" and layout.pending(index).is_file():
        return True
    return all((layout.out / f).is_file() for f in files)


def _differences(previous: dict, current: dict) -> list[str]:
    """``key (old -> new)`` for every setting that differs, nested config keys dotted."""
    def flat(settings: dict) -> dict:
        items = {k: v for k, v in settings.items() if k != "config"}
        items.update(_flatten(settings.get("config") or {}, ""))
        return items

    old, new = flat(previous), flat(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key == "version":
            continue
        before, after = old.get(key, _UNSET), new.get(key, _UNSET)
        if before != after:
            name = "batch plan" if key == "plan" else key
            lines.append(f"{name} ({_show(before)} -> {_show(after)})")
    return lines


def _flatten(config: dict, prefix: str) -> dict:
    items = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.update(_flatten(value, name + "."))
        else:
            items[name] = value
    return items


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
