"""invkit: model inversion from a trained classifier alone.

Example:
    >>> import invkit
    >>> teacher = invkit.load_teacher("digits")
    >>> objective = invkit.build_objective([invkit.parse_prior("cross-entropy"),
    ...                                     invkit.parse_prior("tv-l2:1e-4")])
"""

from importlib import metadata as _metadata

from invkit.errors import InvkitError, PluginConflict
from invkit.hookspecs import hookimpl, hookspec
from invkit.objective import (
    Objective, Prior, PriorRequest, Setup, Step, build_objective, parse_prior,
)
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


def find_teacher(*args, **kwargs):
    """A teacher spec's record, without building it (see :func:`invkit.teachers.find_teacher`);
    ``find_teacher("vgg11").batchnorm`` is False."""
    from invkit.teachers import find_teacher as _find

    return _find(*args, **kwargs)


def spec_has_batchnorm(spec, arch=None):
    """Whether a teacher spec's network has BatchNorm, before loading it (True, False or
    None for unknown; see :func:`invkit.teachers.spec_has_batchnorm`)."""
    from invkit.teachers import spec_has_batchnorm as _spec

    return _spec(spec, arch)


def has_batchnorm(module) -> bool:
    """Whether a network has BatchNorm layers (see :func:`invkit.teachers.has_batchnorm`)."""
    from invkit.teachers import has_batchnorm as _has

    return _has(module)


__all__ = [
    "InvkitError", "PluginConflict", "hookimpl", "hookspec", "Objective", "Prior",
    "PriorRequest", "Setup", "Step", "build_objective", "parse_prior", "get_plugin_manager",
    "Registry", "registry", "MethodSpec", "Option", "PriorSpec", "ScheduleSpec", "Stage",
    "Teacher", "TeacherMeta", "TeacherSpec", "VerifierSpec", "load_teacher", "find_teacher",
    "has_batchnorm", "spec_has_batchnorm", "__version__",
]
