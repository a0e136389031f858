"""invkit: model inversion from a trained classifier alone.

Example:
    >>> import invkit
    >>> teacher = invkit.load_teacher("digits")
    >>> objective = invkit.build_objective([invkit.parse_prior("cross-entropy"),
    ...                                     invkit.parse_prior("tv-l2:1e-4")])
"""

from importlib import metadata as _metadata

from invkit.errors import InvkitError, PluginConflict
from invkit.history import LossHistory, TensorBoardSink, require_tensorboard, term_weights
from invkit.history import plot as plot_losses
from invkit.hookspecs import hookimpl, hookspec
from invkit.objective import (
    Objective, Prior, PriorRequest, Setup, Step, build_objective, parse_prior,
)
from invkit.output import next_free_dir
from invkit.plugins import get_plugin_manager
from invkit.registry import Registry, registry
from invkit.specs import (
    MethodSpec, Option, PriorSpec, ScheduleSpec, Stage, Teacher, TeacherMeta, TeacherSpec,
    VerifierSpec,
)

try:
    __version__ = _metadata.version("invkit")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+source"


def load_teacher(*args, **kwargs):
    """Load a teacher by spec (see :func:`invkit.teachers.load_teacher`)."""
    from invkit.teachers import load_teacher as _load

    return _load(*args, **kwargs)


# Imported on first use: ``import invkit`` stays free of torch (and rich).
_LAZY = {"GeneratedImages": "invkit.data", "ProgressDisplay": "invkit.progress"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'invkit' has no attribute {name!r}")


__all__ = [
    "InvkitError", "PluginConflict", "hookimpl", "hookspec", "Objective", "Prior",
    "PriorRequest", "Setup", "Step", "build_objective", "parse_prior", "get_plugin_manager",
    "Registry", "registry", "MethodSpec", "Option", "PriorSpec", "ScheduleSpec", "Stage",
    "Teacher", "TeacherMeta", "TeacherSpec", "VerifierSpec", "load_teacher", "__version__",
    "LossHistory", "TensorBoardSink", "require_tensorboard", "term_weights", "plot_losses",
    "next_free_dir", "GeneratedImages", "ProgressDisplay",
]
