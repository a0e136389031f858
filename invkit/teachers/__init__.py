"""Teachers: the classifiers a method inverts (also used as verifiers and students).

Built-in sources, registered through the ``invkit_teachers`` hook like any plugin's:

- ``digits``, ``digits-verifier``: small networks trained on scikit-learn's digits,
  bundled with the package (the offline default; :mod:`invkit.teachers.digits`).
- every torchvision classification model by name (``resnet50``, ``mobilenet_v2``, ...;
  :mod:`invkit.teachers.torchvision_models`).
- ``resnet50v15``: NVIDIA's ResNet-50 v1.5 checkpoint (:mod:`invkit.teachers.resnet50v15`).
- ``cifar-resnet18``, ``cifar-resnet34``: CIFAR-form ResNets (:mod:`invkit.teachers.cifar`).

A teacher spec string is a registered name, ``torchvision:NAME`` or
``checkpoint:PATH``. Any registered teacher also loads a weights file
(``weights="path.pth"``): the network is built with ``weights="none"`` and the file
is read by :mod:`invkit.teachers.checkpoint`, so plugin teachers get file loading
for free.

Example:
    >>> teacher = load_teacher("digits")
    >>> save_teacher(teacher, "my_digits.safetensors")
    >>> again = load_teacher("checkpoint:my_digits.safetensors")   # arch from the metadata
    >>> check_verifier(teacher, load_teacher("digits-verifier"))
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from invkit.errors import InvkitError, unknown
from invkit.hookspecs import hookimpl
from invkit.specs import Teacher, TeacherMeta, TeacherSpec

CHECKPOINT = "checkpoint:"
TORCHVISION = "torchvision:"

# Teachers whose checkpoints commonly use other layer names: a key renamer for each.
_RENAMERS = {"cifar-resnet18": "cifar", "cifar-resnet34": "cifar"}
# Extra words for the error when a teacher's default weights file is missing.
_MISSING_HINTS = {"resnet50v15": "download NVIDIA's ResNet-50 v1.5 checkpoint "
                                 "(DeepLearningExamples, resnet50_pyt_amp on NGC)"}


def load_teacher(spec: str | None, arch: str | None = None, weights: str | None = None,
                 trust_checkpoint: bool = False, device="cpu") -> Teacher:
    """Load a teacher (module in eval mode, plus metadata) from a spec string.

    - ``spec``: a registered teacher name (see ``invkit teachers list``), ``torchvision:NAME``
      or ``checkpoint:PATH``; ``None`` means ``arch``.
    - ``arch``: with ``checkpoint:PATH``, the network to load the file into (read from
      the file's metadata when it was written by :func:`save_teacher`).
    - ``weights``: ``None`` for the teacher's default, ``"none"`` for random init, a
      weights name (torchvision: ``DEFAULT``, ``IMAGENET1K_V2``...) or a file.
    - ``trust_checkpoint``: allow full unpickling of ``.pt``/``.pth`` files.

    Every user error is an :class:`InvkitError` with a one-line message.

    Example:
        >>> load_teacher("resnet18", weights="none").meta.num_classes
        1000
        >>> load_teacher("checkpoint:r18.pth", arch="resnet18").meta.weights
        'r18.pth'
    """
    if not spec:
        if not arch:
            raise InvkitError("no teacher given: pass --teacher SPEC or --arch NAME "
                              "(see 'invkit teachers list')")
        spec = arch
    if spec.startswith(CHECKPOINT):
        path = spec[len(CHECKPOINT):]
        if not path:
            raise InvkitError("checkpoint: needs a file, e.g. --teacher checkpoint:model.pth")
        if weights is not None:
            raise InvkitError(f"--weights {weights} cannot be combined with --teacher {spec} "
                              "(the checkpoint is the weights)")
        teacher = _load_checkpoint(spec, Path(path).expanduser(), arch, trust_checkpoint)
    else:
        if arch and arch not in (spec, spec.removeprefix(TORCHVISION)):
            raise InvkitError(f"--arch {arch} only applies to --teacher checkpoint:PATH; "
                              f"to use {arch}, pass it alone (or --teacher {arch})")
        record = _record(spec)
        teacher = _build(record, spec, weights, trust_checkpoint)
    try:
        teacher.module.to(device).eval()
    except (RuntimeError, AssertionError, ValueError) as error:  # e.g. no CUDA here
        raise InvkitError(f"cannot put teacher {spec!r} on device {device!r}: "
                          f"{' '.join(str(error).split())[:160]}") from None
    return teacher


def find_teacher(spec: str | None, arch: str | None = None) -> TeacherSpec | None:
    """The record a teacher spec names, checked without building or loading anything.

    Used by ``--dry-run`` so a misspelt name fails before any work. ``None`` for
    ``checkpoint:PATH`` without ``arch`` (the file itself names its architecture).

    Example:
        >>> find_teacher("resnet5")
        InvkitError: unknown teacher 'resnet5'; did you mean: resnet50, resnet34, ...
    """
    name = spec or arch
    if not name:
        raise InvkitError("no teacher given: pass --teacher SPEC or --arch NAME "
                          "(see 'invkit teachers list')")
    if name.startswith(CHECKPOINT):
        return _record(arch) if arch else None
    return _record(name)


def _record(spec: str) -> TeacherSpec:
    if spec.startswith(TORCHVISION):
        from invkit.teachers import torchvision_models

        name = spec[len(TORCHVISION):]
        if name not in torchvision_models.model_names():
            raise unknown("teacher", f"{TORCHVISION}{name}",
                          [f"{TORCHVISION}{n}" for n in torchvision_models.model_names()])
        return dataclasses.replace(torchvision_models.spec(name), provider=__name__)
    from invkit.registry import registry

    return registry("teacher").get(spec)


def _build(record: TeacherSpec, name: str, weights: str | None, trust: bool,
           file_metadata: dict | None = None) -> Teacher:
    """Build ``record``'s teacher with ``weights`` (None, "none", a name or a file)."""
    from invkit.teachers import checkpoint

    if weights is None and record.default_weights and checkpoint.looks_like_file(
            record.default_weights):
        weights = _default_file(record)
    if weights is not None and weights.lower() != "none" and checkpoint.looks_like_file(weights):
        path = Path(weights).expanduser()
        state = checkpoint.read_state_dict(path, trust=trust)
        if file_metadata is None:
            file_metadata = checkpoint.read_metadata(path)
        teacher = _call_factory(record, "none")
        _fit_head(teacher, file_metadata, path)
        checkpoint.load_into(teacher.module, state, source=str(path), arch=record.name,
                             rename=_renamer(record.name))
        meta = dataclasses.replace(teacher.meta, weights=str(path))
        if checkpoint.has_teacher_metadata(file_metadata):
            # The file's own metadata (class names, mean/std) is the truth about it.
            meta = checkpoint.meta_from_metadata(file_metadata, path, weights=str(path),
                                                 fallback=teacher.meta)
    else:
        teacher = _call_factory(record, weights)
        meta = teacher.meta
    meta = dataclasses.replace(meta, arch=record.name)  # so save_teacher round-trips
    return Teacher(module=teacher.module, meta=meta, name=name)


def _fit_head(teacher: Teacher, file_metadata: dict, path: Path) -> None:
    """Give the freshly built network the head width its file records (an extended
    network has more classes than its architecture builds by default)."""
    from invkit.teachers import checkpoint, heads

    if not checkpoint.has_teacher_metadata(file_metadata):
        return
    try:
        saved = int(file_metadata["num_classes"])
    except (KeyError, ValueError):
        return  # meta_from_metadata reports the incomplete metadata
    if saved != teacher.meta.num_classes:
        try:
            heads.resize_head(teacher.module, saved)
        except InvkitError as error:
            raise InvkitError(f"{path} holds {saved} classes but {teacher.meta.arch!r} builds "
                              f"{teacher.meta.num_classes}, and its head cannot be resized: "
                              f"{error}") from None


def _default_file(record: TeacherSpec) -> str:
    path = Path(record.default_weights).expanduser()
    if not path.is_file():
        hint = _MISSING_HINTS.get(record.name)
        hint = f"{hint} and put it" if hint else "put the file"
        raise InvkitError(f"{record.name} weights not found at {record.default_weights}: "
                          f"{hint} there ({path.absolute()}), or pass --weights FILE "
                          "(--weights none for random init)")
    return str(path)


def _renamer(name: str):
    if _RENAMERS.get(name) == "cifar":
        from invkit.teachers.cifar import rename_key

        return rename_key
    return None


def _call_factory(record: TeacherSpec, weights: str | None) -> Teacher:
    """Call a (possibly third-party) factory; its bugs become one-line errors."""
    from torch import nn

    try:
        built = record.factory() if weights is None else record.factory(weights=weights)
    except InvkitError:
        raise
    except Exception as error:  # noqa: BLE001 - a plugin's bug must not print a traceback
        raise InvkitError(f"teacher {record.name!r} (from plugin {record.provider!r}) failed "
                          f"to build: {type(error).__name__}: {error}") from None
    if isinstance(built, nn.Module) and record.input_size and record.num_classes:
        # A plugin may return a bare module; its spec has the metadata we need.
        built = Teacher(module=built, meta=TeacherMeta(
            arch=record.name, input_size=record.input_size, num_classes=record.num_classes,
            weights=weights or record.default_weights), name=record.name)
    if not isinstance(built, Teacher):
        raise InvkitError(f"teacher {record.name!r} (from plugin {record.provider!r}) returned "
                          f"a {type(built).__name__}, not an invkit Teacher")
    return built


def _load_checkpoint(spec: str, path: Path, arch: str | None, trust: bool) -> Teacher:
    from invkit.registry import registry
    from invkit.teachers import checkpoint

    metadata = checkpoint.read_metadata(path)  # also checks that the file exists
    if arch is None:
        if not checkpoint.has_teacher_metadata(metadata):
            raise InvkitError(f"{path} does not say which network it holds: pass --arch NAME "
                              "(e.g. --arch resnet50; see 'invkit teachers list')")
        arch = metadata["arch"]
        teachers = registry("teacher")
        if arch not in teachers:
            raise InvkitError(f"{path} holds a {arch!r} network, which no installed plugin "
                              "provides: install that plugin, or pass --arch NAME")
    record = _record(arch)
    return _build(record, spec, str(path), trust, file_metadata=metadata)


def save_teacher(teacher: Teacher, path: str | os.PathLike,
                 extra: dict[str, str] | None = None) -> Path:
    """Write ``teacher``'s weights and metadata to a safetensors file, atomically.

    ``load_teacher("checkpoint:PATH")`` loads it back without ``--arch``; ``extra``
    adds string metadata (e.g. accuracies).

    Example:
        >>> save_teacher(load_teacher("digits"), "digits_copy.safetensors")
        PosixPath('digits_copy.safetensors')
    """
    from invkit.output import atomic_write_bytes
    from invkit.teachers import checkpoint

    data = checkpoint.state_dict_bytes(teacher.module,
                                       checkpoint.teacher_metadata(teacher.meta, extra))
    return atomic_write_bytes(path, data)


def check_verifier(teacher: Teacher, verifier: Teacher) -> None:
    """Refuse a verifier that cannot judge the teacher's images (other classes or size).

    Example:
        >>> check_verifier(load_teacher("digits"), load_teacher("resnet18", weights="none"))
        Traceback (most recent call last):
        invkit.errors.InvkitError: verifier 'resnet18' does not fit teacher 'digits': ...
    """
    t, v = teacher.meta, verifier.meta
    problem = None
    if t.num_classes != v.num_classes:
        problem = f"it has {v.num_classes} classes, the teacher {t.num_classes}"
    elif t.input_size != v.input_size:
        problem = f"its input size is {v.input_size} px, the teacher's {t.input_size} px"
    if problem:
        raise InvkitError(f"verifier {verifier.name!r} does not fit teacher {teacher.name!r}: "
                          f"{problem} (choose a verifier with the teacher's classes and input "
                          "size via --verifier-arch; see 'invkit teachers list')")


@hookimpl
def invkit_teachers():
    from invkit.teachers import cifar, digits, resnet50v15, torchvision_models

    yield from digits.teacher_specs()
    yield from cifar.teacher_specs()
    yield from resnet50v15.teacher_specs()
    yield from torchvision_models.teacher_specs()


__all__ = ["load_teacher", "save_teacher", "check_verifier", "invkit_teachers"]
