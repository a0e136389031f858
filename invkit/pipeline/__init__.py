"""The run pipeline every method shares: resolve, plan, write, resume, torchrun, signals.

``invkit run METHOD`` is this package with a command line around it; from Python the same
run, with the same presets and defaults, is :func:`run_method`::

    from invkit import run_method
    summary = run_method("deepinversion", teacher="digits", images_per_class=10,
                         output="generations/digits-10")          # resumable: resume=True

Modules: :mod:`~invkit.pipeline.record` (the typed records), :mod:`~invkit.pipeline.resolve`
(request -> everything a run uses, no weights), :mod:`~invkit.pipeline.plan` (batches and
seeds), :mod:`~invkit.pipeline.layout` (files), :mod:`~invkit.pipeline.state` (resume),
:mod:`~invkit.pipeline.signals` (SIGINT/SIGTERM), :mod:`~invkit.pipeline.writer` (the
dataset loop, torchrun), :mod:`~invkit.pipeline.execute` (networks + generator + writer).
"""

from __future__ import annotations

from typing import Any

from invkit.pipeline.layout import GeneratedBatch
from invkit.pipeline.plan import Batch, batch_seed, plan_batches
from invkit.pipeline.record import RunIdentity, RunInfo, RunRequest
from invkit.pipeline.resolve import ResolvedRun, resolve_run
from invkit.pipeline.signals import RunInterrupted, resume_command
from invkit.pipeline.writer import generate_dataset


def run_method(method: str = "deepinversion", options: Any = None, **request: Any) -> dict:
    """Run a whole dataset plan from Python, exactly as ``invkit run METHOD`` would.

    ``request`` takes the fields of :class:`RunRequest` (``teacher``, ``images_per_class``,
    ``output``, ``resume``...); ``options`` an instance of the method's options dataclass.
    Returns the summary written to ``run.json``.

    Example:
        >>> from invkit_plugins.deepinversion import DIOptions
        >>> summary = run_method("deepinversion", DIOptions(iterations=2), teacher="digits",
        ...                      bs=4, num_batches=2, output="out/di", quiet=True)
        >>> summary["num_images"]
        8
    """
    from invkit.pipeline.execute import execute

    return execute(resolve_run(RunRequest(method=method, **request), options))


__all__ = [
    "run_method", "RunRequest", "RunIdentity", "RunInfo", "ResolvedRun", "resolve_run",
    "Batch", "batch_seed", "plan_batches", "GeneratedBatch", "generate_dataset",
    "RunInterrupted", "resume_command",
]
