"""invkit: model inversion from a trained classifier alone.

This module is the public API: plugins (the bundled ones included) import only from
here. Names that need torch are imported on first use, so ``import invkit`` stays fast.

Example:
    >>> import invkit
    >>> objective = invkit.build_objective([invkit.parse_prior("cross-entropy"),
    ...                                     invkit.parse_prior("tv-l2:1e-4")])
    >>> objective.describe()
    '1*cross-entropy + 0.0001*tv-l2'
"""

from __future__ import annotations

import importlib
from typing import Any

from invkit.errors import InvkitError, PluginConflict
from invkit.history import LossHistory, TensorBoardSink, require_tensorboard, term_weights
from invkit.history import plot as plot_losses
from invkit.hookspecs import hookimpl, hookspec
from invkit.lock import OutputLock
from invkit.methods import (
    PRECISIONS, Checkpoint, Context, Generation, MethodOption, autocast, choose_preset, finish,
    frozen, merge_options, method_options, module_device, option, teacher_predictions,
    verifier_predictions,
)
from invkit.objective import (
    Objective, Prior, PriorRequest, Setup, Step, build_objective, define_prior, parse_prior,
)
from invkit.output import atomic_write_bytes, next_free_dir
from invkit.plugins import get_plugin_manager
from invkit.registry import Registry, registry
from invkit.resources import check_memory, estimate_inversion_bytes
from invkit.specs import (
    MethodSpec, Option, Preset, PriorFlag, PriorSpec, ScheduleSpec, Stage, Teacher,
    TeacherMeta, TeacherSpec, VerifierSpec,
)
from invkit.validate import finite_float

# The one place the version is written: pyproject.toml reads it from here (and reading
# it back through importlib.metadata would cost start-up time).
__version__ = "0.1.0"

# Imported on first use (they import torch): name -> module.
_LAZY = {
    "load_teacher": "invkit.teachers", "save_teacher": "invkit.teachers",
    "preview_teacher": "invkit.teachers", "check_verifier": "invkit.teachers",
    "find_teacher": "invkit.teachers", "has_batchnorm": "invkit.teachers",
    "spec_has_batchnorm": "invkit.teachers",
    "as_verifier": "invkit.verifiers", "TopKAccuracy": "invkit.verifiers",
    "build_schedule": "invkit.schedules", "scale_plan": "invkit.schedules",
    "CrossEntropy": "invkit.priors", "TotalVariation": "invkit.priors",
    "L2Norm": "invkit.priors",
    "run_method": "invkit.pipeline", "RunRequest": "invkit.pipeline",
    "resolve_run": "invkit.pipeline", "plan_batches": "invkit.pipeline",
    "generate_dataset": "invkit.pipeline", "RunInterrupted": "invkit.pipeline",
    "FiniteFloat": "invkit.cli.options", "OutputDir": "invkit.cli.options",
    "GeneratedImages": "invkit.data", "ProgressDisplay": "invkit.progress",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'invkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "InvkitError", "PluginConflict", "hookimpl", "hookspec",
    # records plugins return
    "MethodSpec", "Option", "Preset", "PriorFlag", "PriorSpec", "ScheduleSpec", "Stage",
    "Teacher", "TeacherMeta", "TeacherSpec", "VerifierSpec",
    # objectives
    "Objective", "Prior", "PriorRequest", "Setup", "Step", "build_objective", "parse_prior",
    "define_prior",
    "CrossEntropy", "TotalVariation", "L2Norm",
    # writing a method
    "option", "MethodOption", "method_options", "merge_options", "choose_preset", "Context",
    "Checkpoint", "Generation", "finish", "teacher_predictions", "verifier_predictions",
    "module_device", "autocast", "frozen", "PRECISIONS", "build_schedule", "scale_plan",
    "as_verifier", "TopKAccuracy",
    # plugins and registries
    "get_plugin_manager", "Registry", "registry",
    # teachers
    "load_teacher", "save_teacher", "preview_teacher", "check_verifier", "find_teacher",
    "has_batchnorm", "spec_has_batchnorm",
    # running
    "run_method", "RunRequest", "resolve_run", "plan_batches", "generate_dataset",
    "RunInterrupted", "__version__",
    # safety
    "FiniteFloat", "OutputDir", "OutputLock", "check_memory", "estimate_inversion_bytes",
    "finite_float",
    # everyday use
    "LossHistory", "TensorBoardSink", "require_tensorboard", "term_weights", "plot_losses",
    "next_free_dir", "atomic_write_bytes", "GeneratedImages", "ProgressDisplay",
]
