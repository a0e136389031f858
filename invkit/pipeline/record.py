"""The typed records of a run: what was asked, what defines the dataset, how it ran.

- :class:`RunRequest`: the options every method shares (``invkit run METHOD`` declares
  them once; the Python API takes the same fields).
- :class:`RunIdentity`: what defines the dataset; ``--resume`` compares exactly this.
- :class:`RunInfo`: how and where this session runs; may differ on resume.

Core never names a method's options: the identity holds the method's configured record
(``config``, a frozen dataclass) as it is.

Example:
    >>> RunRequest(teacher="digits", images_per_class=10).method
    'deepinversion'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from invkit.objective import PriorRequest
from invkit.output import to_jsonable


@dataclass(frozen=True)
class RunRequest:
    """The shared options of ``invkit run METHOD`` (``None``: the preset's or default).

    ``prior_flags`` holds the method's shorthand flags that were given, as
    ``(flag name, value)`` pairs (e.g. ``("r_feature", 0.01)``).
    """

    method: str = "deepinversion"
    teacher: str | None = None
    arch: str | None = None
    weights: str | None = None
    trust_checkpoint: bool = False
    priors: tuple[PriorRequest, ...] = ()
    no_default_priors: bool = False
    prior_flags: tuple[tuple[str, float], ...] = ()
    preset: str | None = None
    bs: int | None = None
    targets: tuple[int, ...] | None = None
    random_label: bool = False
    num_batches: int | None = None
    images_per_class: int | None = None
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"
    output: str | None = None
    exp_name: str | None = None
    format: str = "png"
    shard_size: int = 1024
    resume: bool = False
    overwrite: bool = False
    verifier: bool = False
    verifier_arch: str | None = None
    verifier_weights: str | None = None
    student: str | None = None
    save_every: int = 100
    quiet: bool = False
    tensorboard: bool = False
    threads: int | None = None


@dataclass(frozen=True)
class RunIdentity:
    """What defines a generated dataset: two runs with equal identities make the same images."""

    method: str
    teacher: str
    arch: str | None
    weights: str | None
    student: str | None
    verifier: str | None
    verifier_weights: str | None
    preset: str | None
    objective: str
    priors: tuple[tuple[str, float, tuple[tuple[str, Any], ...]], ...]
    config: Any
    precision: str
    bs: int
    targets: tuple[int, ...] | None
    targets_source: str
    random_labels: bool
    num_batches: int | None
    images_per_class: int | None
    seed: int
    format: str
    shard_size: int

    def to_json(self) -> dict:
        """Plain JSON data (the method's config flattened to its fields)."""
        return to_jsonable(_as_dict(self))


@dataclass(frozen=True)
class RunInfo:
    """How this session runs: where, on what, and why the preset was chosen."""

    output: str
    exp_name: str
    device: str
    save_every: int
    preset_reason: str

    def to_json(self) -> dict:
        return to_jsonable(dataclasses.asdict(self))


def _as_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return obj.to_dict()
        return {f.name: _as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_as_dict(v) for v in obj]
    return obj
