"""Teachers: the classifiers a method inverts (also used as verifiers and students).

Built-in sources, registered through the ``invkit_teachers`` hook like any plugin's:

- ``digits``, ``digits-verifier``: small networks trained on scikit-learn's digits,
  bundled with the package (the offline default; :mod:`invkit.teachers.digits`).
- every torchvision classification model by name (``resnet50``, ``mobilenet_v2``, ...;
  :mod:`invkit.teachers.torchvision_models`).
- ``resnet50v15``: NVIDIA's ResNet-50 v1.5 checkpoint (:mod:`invkit.teachers.resnet50v15`).
- ``cifar-resnet18``, ``cifar-resnet34``: CIFAR-form ResNets (:mod:`invkit.teachers.cifar`).
- ``timm:NAME``: every timm classifier, with ``pip install 'invkit[timm]'``
  (:mod:`invkit.teachers.timm_models`; resolved on demand, not registered).

A teacher spec string is a registered name, ``torchvision:NAME``, ``timm:NAME`` or
``checkpoint:PATH``. Whether a teacher has BatchNorm is known before its weights are
loaded (:func:`spec_has_batchnorm`: True, False, or None for unknown) and, once built,
:func:`has_batchnorm` says it of the module itself.

Any registered teacher also loads a weights file (``weights="path.pth"``): the network
is built with ``weights="none"`` and the file is read by
:mod:`invkit.teachers.checkpoint`, so plugin teachers get file loading for free.

Example:
    >>> teacher = load_teacher("digits")
    >>> save_teacher(teacher, "my_digits.safetensors")
    PosixPath('my_digits.safetensors')
    >>> again = load_teacher("checkpoint:my_digits.safetensors")   # arch from the metadata
    >>> again.meta.arch, again.meta.weights
    ('digits', 'my_digits.safetensors')
    >>> check_verifier(teacher, load_teacher("digits-verifier"))   # None: a fit pair
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
TIMM = "timm:"

# Teachers whose checkpoints commonly use other layer names: a key renamer for each.
_RENAMERS = {"cifar-resnet18": "cifar", "cifar-resnet34": "cifar"}
# Extra words for the error when a teacher's default weights file is missing.
_MISSING_HINTS = {"resnet50v15": "download NVIDIA's ResNet-50 v1.5 checkpoint "
                                 "(DeepLearningExamples, resnet50_pyt_amp on NGC)"}


def load_teacher(spec: str | None, arch: str | None = None, weights: str | None = None,
                 trust_checkpoint: bool = False, device="cpu",
                 input_size: int | None = None) -> Teacher:
    """Load a teacher (module in eval mode, plus metadata) from a spec string.

    - ``spec``: a registered teacher name (see ``invkit teachers list``), ``torchvision:NAME``
      or ``checkpoint:PATH``; ``None`` means ``arch``.
    - ``arch``: with ``checkpoint:PATH``, the network to load the file into (read from
      the file's metadata when it was written by :func:`save_teacher`).
    - ``weights``: ``None`` for the teacher's default, ``"none"`` for random init, a
      weights name (torchvision: ``DEFAULT``, ``IMAGENET1K_V2``...) or a file.
    - ``trust_checkpoint``: allow full unpickling of ``.pt``/``.pth`` files.
    - ``input_size``: build the network for this input size instead of its default
      (vision transformers fix it at construction; other networks only record it), for
      fast runs at small resolution, e.g. ``load_teacher("vit_b_16", weights="none",
      input_size=32)``. Teachers whose factory cannot change it refuse.

    Every user error is an :class:`InvkitError` with a one-line message.

    Example:
        >>> load_teacher("digits", weights="none").meta.num_classes
        10
        >>> save_teacher(load_teacher("digits"), "digits.safetensors")
        PosixPath('digits.safetensors')
        >>> load_teacher("checkpoint:digits.safetensors", arch="digits").meta.weights
        'digits.safetensors'
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
        if input_size is not None:
            raise InvkitError("input size cannot be changed for --teacher checkpoint:PATH (the "
                              "file holds the network for its own size)")
        teacher = _load_checkpoint(spec, Path(path).expanduser(), arch, trust_checkpoint)
    else:
        if arch and arch not in (spec, spec.removeprefix(TORCHVISION)):
            raise InvkitError(f"--arch {arch} only applies to --teacher checkpoint:PATH; "
                              f"to use {arch}, pass it alone (or --teacher {arch})")
        record = _record(spec)
        teacher = _build(record, spec, weights, trust_checkpoint, input_size=input_size)
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
        >>> find_teacher("digits").name
        'digits'
        >>> find_teacher("resnet5")
        Traceback (most recent call last):
        invkit.errors.InvkitError: unknown teacher 'resnet5'; did you mean: resnet50, ...
    """
    name = spec or arch
    if not name:
        raise InvkitError("no teacher given: pass --teacher SPEC or --arch NAME "
                          "(see 'invkit teachers list')")
    if name.startswith(CHECKPOINT):
        return _record(arch) if arch else None
    return _record(name)


def preview_teacher(spec: str | None, arch: str | None = None,
                    weights: str | None = None) -> TeacherMeta:
    """A teacher's metadata without loading its weights (input size, classes, grey, family).

    Read from the teacher's spec record, or from a file's own metadata (``checkpoint:PATH``,
    ``--weights FILE``); a plugin's spec that does not state its size or class count is
    built with random weights to find out. Used to resolve and validate a run before any
    weights load or any file is written; the loaded teacher is checked against it.

    Example:
        >>> preview_teacher("digits").family
        'digits'
    """
    from invkit.teachers import checkpoint

    name = spec or arch
    if not name:
        raise InvkitError("no teacher given: pass --teacher SPEC or --arch NAME "
                          "(see 'invkit teachers list')")
    path = None
    if name.startswith(CHECKPOINT):
        path = Path(name[len(CHECKPOINT):]).expanduser()
        if not str(path) or path == Path("."):
            raise InvkitError("checkpoint: needs a file, e.g. --teacher checkpoint:model.pth")
    elif weights is not None and weights.lower() != "none" and checkpoint.looks_like_file(weights):
        path = Path(weights).expanduser()
    metadata = checkpoint.read_metadata(path) if path is not None else {}
    if path is not None and name.startswith(CHECKPOINT) and arch is None:
        if not checkpoint.has_teacher_metadata(metadata):
            raise InvkitError(f"{path} does not say which network it holds: pass --arch NAME "
                              "(e.g. --arch resnet50; see 'invkit teachers list')")
        arch = metadata["arch"]
    record = _record(arch if name.startswith(CHECKPOINT) else name)
    meta = _spec_meta(record)
    if checkpoint.has_teacher_metadata(metadata):
        meta = checkpoint.meta_from_metadata(metadata, path, weights=str(path), fallback=meta)
    return meta


def _spec_meta(record: TeacherSpec) -> TeacherMeta:
    if record.input_size is None or record.num_classes is None:
        return _call_factory(record, "none").meta
    return TeacherMeta(arch=record.name, input_size=record.input_size,
                       num_classes=record.num_classes, grayscale=record.grayscale,
                       family=record.family)


def spec_has_batchnorm(spec: str | None, arch: str | None = None) -> bool | None:
    """Whether the teacher a spec names has BatchNorm, before its weights are loaded.

    True or False when known; None when unknown (a plugin teacher that does not say, a
    timm network that cannot be built on the meta device, a checkpoint file without
    invkit metadata and no ``arch``). For ``checkpoint:PATH`` the architecture comes
    from ``arch`` or the file's metadata (read without loading the weights).

    Example:
        >>> spec_has_batchnorm("digits"), spec_has_batchnorm("vgg11")
        (True, False)
        >>> save_teacher(load_teacher("digits"), "digits.safetensors")
        PosixPath('digits.safetensors')
        >>> spec_has_batchnorm("checkpoint:digits.safetensors")   # arch in the file
        True
    """
    record = find_teacher(spec, arch)
    if record is None:
        from invkit.teachers import checkpoint

        metadata = checkpoint.read_metadata(Path(spec[len(CHECKPOINT):]).expanduser())
        if not checkpoint.has_teacher_metadata(metadata):
            return None
        record = _record(metadata["arch"])
    return record.batchnorm


def has_batchnorm(module) -> bool:
    """Whether ``module`` contains a BatchNorm layer (any ``BatchNorm1d/2d/3d``,
    ``SyncBatchNorm``, or a subclass such as timm's ``BatchNormAct2d``): the layers whose
    running statistics BatchNorm-matching methods (DeepInversion) need.

    Example:
        >>> has_batchnorm(load_teacher("digits").module)
        True
        >>> has_batchnorm(load_teacher("digits-vit").module)
        False
    """
    from torch import nn

    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _record(spec: str) -> TeacherSpec:
    if spec.startswith(TIMM):
        from invkit.teachers import timm_models

        return dataclasses.replace(timm_models.spec(spec[len(TIMM):], with_batchnorm=True),
                                   provider=__name__)
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
           file_metadata: dict | None = None, input_size: int | None = None) -> Teacher:
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
        teacher = _call_factory(record, "none", input_size)
        # A pruned network (invkit prune): resize its layers to the recorded widths first.
        checkpoint.apply_pruned_structure(teacher.module, file_metadata, source=str(path))
        _fit_head(teacher, file_metadata, path)
        checkpoint.load_into(teacher.module, state, source=str(path), arch=record.name,
                             rename=_renamer(record.name))
        meta = dataclasses.replace(teacher.meta, weights=str(path))
        if checkpoint.has_teacher_metadata(file_metadata):
            # The file's own metadata (class names, mean/std) is the truth about it.
            meta = checkpoint.meta_from_metadata(file_metadata, path, weights=str(path),
                                                 fallback=teacher.meta)
    else:
        teacher = _call_factory(record, weights, input_size, trust)
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


def _call_factory(record: TeacherSpec, weights: str | None, input_size: int | None = None,
                  trust: bool = False) -> Teacher:
    """Call a (possibly third-party) factory; its bugs become one-line errors.

    ``trust`` (``--trust-checkpoint``) reaches factories that read weights files
    themselves and declare a ``trust`` parameter (torchvision's); others never get it.
    ``input_size`` reaches factories that declare it (ViTs built for another size).
    """
    from torch import nn

    kwargs = {} if weights is None else {"weights": weights}
    if trust and _takes(record.factory, "trust"):
        kwargs["trust"] = True
    if input_size is not None and input_size != record.input_size:
        if not _takes(record.factory, "input_size"):
            raise InvkitError(f"teacher {record.name!r} cannot be built for another input size "
                              f"(it takes {record.input_size} px)")
        kwargs["input_size"] = input_size
    from invkit.plugins import call_factory

    built = call_factory(record.factory, f"teacher {record.name!r}", record.provider, **kwargs)
    if isinstance(built, nn.Module) and record.input_size and record.num_classes:
        # A plugin may return a bare module; its spec has the metadata we need.
        built = Teacher(module=built, meta=TeacherMeta(
            arch=record.name, input_size=record.input_size, num_classes=record.num_classes,
            weights=weights or record.default_weights), name=record.name)
    if not isinstance(built, Teacher):
        raise InvkitError(f"teacher {record.name!r} (from plugin {record.provider!r}) returned "
                          f"a {type(built).__name__}, not an invkit Teacher")
    return built


def _takes(factory, parameter: str) -> bool:
    import inspect

    try:
        return parameter in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and other callables without a signature
        return False


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
        if arch not in teachers and not arch.startswith((TORCHVISION, TIMM)):
            raise InvkitError(f"{path} holds a {arch!r} network, which no installed plugin "
                              "provides: install that plugin, or pass --arch NAME")
    record = _record(arch)
    # A network saved at another input size (e.g. a ViT built for 32 px) is rebuilt so;
    # the metadata is checked (plausible sizes and statistics) before anything is built.
    size = None
    if checkpoint.has_teacher_metadata(metadata):
        size = checkpoint.meta_from_metadata(metadata, path, weights=str(path)).input_size
        size = size if size != record.input_size else None
    return _build(record, spec, str(path), trust, file_metadata=metadata, input_size=size)


def save_teacher(teacher: Teacher, path: str | os.PathLike,
                 extra: dict[str, str] | None = None) -> Path:
    """Write ``teacher``'s weights and metadata to a safetensors file, atomically.

    ``load_teacher("checkpoint:PATH")`` loads it back without ``--arch``; ``extra``
    adds string metadata (e.g. accuracies). A network whose layer widths differ from its
    architecture's (pruned by ``invkit prune``, then perhaps distilled further) records
    them, so it loads back at those widths.

    Example:
        >>> save_teacher(load_teacher("digits"), "digits_copy.safetensors")
        PosixPath('digits_copy.safetensors')
    """
    from invkit.output import atomic_write_bytes
    from invkit.teachers import checkpoint

    extra = {**_changed_widths(teacher), **(extra or {})}
    data = checkpoint.state_dict_bytes(teacher.module,
                                       checkpoint.teacher_metadata(teacher.meta, extra))
    return atomic_write_bytes(path, data)


def _changed_widths(teacher: Teacher) -> dict[str, str]:
    """``{"pruned": ...}`` when ``teacher``'s layers are narrower than its architecture's
    (compared with a fresh, randomly initialised build), else ``{}``."""
    import json

    from invkit.teachers import checkpoint

    try:
        reference = _call_factory(_record(teacher.meta.arch), "none").module
    except InvkitError:
        return {}  # an architecture no plugin provides: nothing to compare with
    changed = checkpoint.changed_layers(reference, teacher.module)
    return {checkpoint.PRUNED_KEY: json.dumps(changed)} if changed else {}


def check_verifier(teacher: Teacher, verifier: Teacher) -> None:
    """Refuse a verifier that cannot judge the teacher's images (other classes or size).

    Example:
        >>> check_verifier(load_teacher("digits"), load_teacher("resnet18", weights="none"))
        Traceback (most recent call last):
        invkit.errors.InvkitError: verifier 'resnet18' does not fit teacher 'digits': ...
    """
    check_fits(teacher.meta, teacher.name, verifier.meta, verifier.name)


def check_fits(teacher: TeacherMeta, teacher_name: str, verifier: TeacherMeta,
               verifier_name: str) -> None:
    """:func:`check_verifier` on metadata alone (before any weights load)."""
    problem = None
    if teacher.num_classes != verifier.num_classes:
        problem = f"it has {verifier.num_classes} classes, the teacher {teacher.num_classes}"
    elif teacher.input_size != verifier.input_size:
        problem = (f"its input size is {verifier.input_size} px, the teacher's "
                   f"{teacher.input_size} px")
    if problem:
        raise InvkitError(f"verifier {verifier_name!r} does not fit teacher {teacher_name!r}: "
                          f"{problem} (choose a verifier with the teacher's classes and input "
                          "size via --verifier-arch; see 'invkit teachers list')")


@hookimpl
def invkit_teachers():
    from invkit.teachers import cifar, digits, resnet50v15, torchvision_models

    yield from digits.teacher_specs()
    yield from cifar.teacher_specs()
    yield from resnet50v15.teacher_specs()
    yield from torchvision_models.teacher_specs()


__all__ = ["load_teacher", "preview_teacher", "save_teacher", "check_verifier", "find_teacher",
           "has_batchnorm", "spec_has_batchnorm", "invkit_teachers"]
