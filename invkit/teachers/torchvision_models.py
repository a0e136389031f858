"""Every classification model torchvision lists, as a teacher named after it.

``--weights`` takes a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V2`` or the
full ``ResNet50_Weights.IMAGENET1K_V2``) or ``none`` for random initialisation (with
the default weights' metadata, for smoke tests and timing). Weights files are loaded
by :func:`invkit.teachers.load_teacher`. Metadata (classes, crop size, mean/std) is
read from the weights enum, never downloaded.

Offline: weights already in the torch hub cache are used; otherwise a download is
tried with a short network timeout (none at all under ``INVKIT_OFFLINE=1``), and on
failure the error names the exact file and cache folder to put it in.

Safety: the cached file is read by invkit with ``torch.load(weights_only=True)`` (full
unpickling only with ``trust=True``, i.e. ``--trust-checkpoint``), never by
torchvision's own loader, which unpickles fully.

Example:
    >>> build("resnet18", weights="none").meta.input_size
    224
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from pathlib import Path

from invkit.errors import InvkitError

#: Seconds a stalled weights download may wait on the network before giving up.
DOWNLOAD_TIMEOUT = 20.0

# Which model families have BatchNorm, by name pattern (first match wins). A static
# table because building the 80 models to look (even on the ``meta`` device, which
# RegNet does not support) takes about a minute; tests check it against the modules.
BATCHNORM_PATTERNS = (
    ("vgg*_bn", True),
    ("vgg*", False), ("alexnet", False), ("squeezenet*", False), ("vit_*", False),
    ("swin_*", False), ("convnext_*", False),
    ("resne*", True), ("wide_resnet*", True), ("densenet*", True), ("efficientnet_*", True),
    ("googlenet", True), ("inception_v3", True), ("mnasnet*", True), ("mobilenet_*", True),
    ("regnet_*", True), ("shufflenet_*", True), ("maxvit_*", True),
)


@functools.cache
def model_names() -> tuple[str, ...]:
    """Every classification model torchvision lists (not detection, segmentation, ...)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def batchnorm(name: str) -> bool | None:
    """Whether torchvision model ``name`` has BatchNorm layers (None: a family this
    table does not know, e.g. one added by a newer torchvision).

    Example:
        >>> batchnorm("resnet50"), batchnorm("vgg11"), batchnorm("vgg11_bn")
        (True, False, True)
    """
    from fnmatch import fnmatchcase

    return next((has for pattern, has in BATCHNORM_PATTERNS if fnmatchcase(name, pattern)),
                None)


def weights_enum(name: str):
    import torchvision

    return torchvision.models.get_model_weights(name)


@functools.cache
def describe(name: str) -> dict:
    """Input size, class count, mean/std and class names from the DEFAULT weights' metadata.

    Example:
        >>> describe("inception_v3")["input_size"]
        299
    """
    enum = weights_enum(name)
    default = enum.DEFAULT
    return _describe_weights(default)


def _describe_weights(weights) -> dict:
    keywords = getattr(weights.transforms, "keywords", {}) or {}
    crop = keywords.get("crop_size", 224)
    crop = crop[0] if isinstance(crop, (tuple, list)) else crop
    categories = tuple(weights.meta.get("categories") or ())
    return {
        "input_size": int(crop),
        "num_classes": len(categories) or 1000,
        "mean": tuple(keywords.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(keywords.get("std", (0.229, 0.224, 0.225))),
        "class_names": categories or None,
    }


def weight_names(name: str) -> list[str]:
    return ["DEFAULT"] + [w.name for w in weights_enum(name)]


def resolve_weights(name: str, weights: str):
    """The weights enum member that ``weights`` names for model ``name``."""
    import torchvision

    enum = weights_enum(name)
    try:
        if "." in weights:
            member = torchvision.models.get_weight(weights)
            if type(member) is not enum:
                raise ValueError(weights)
            return member
        return enum[weights.upper()] if weights.upper() != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError, AttributeError):
        valid = ", ".join(weight_names(name))
        raise InvkitError(f"unknown weights {weights!r} for {name} (valid: none, {valid}, "
                          "or a weights file)") from None


def cache_dir() -> Path:
    """Where torch keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_file(weights) -> Path:
    """Where ``weights`` lives (or would live) in the torch hub cache."""
    return cache_dir() / os.path.basename(weights.url.split("?")[0])


def offline() -> bool:
    return os.environ.get("INVKIT_OFFLINE", "") not in ("", "0")


def _missing(name: str, weights, reason: str) -> InvkitError:
    path = cached_file(weights)
    return InvkitError(
        f"weights {type(weights).__name__}.{weights.name} for {name} are not cached and "
        f"{reason}: put {path.name} (from {weights.url}) in {path.parent}, or pass "
        f"--weights FILE (or --weights none for random init)")


def build(name: str, weights: str | None = None, input_size: int | None = None,
          trust: bool = False):
    """A torchvision classifier as a :class:`~invkit.specs.Teacher`.

    ``weights``: ``None``/``"DEFAULT"``, a weights name, or ``"none"``. The weights file
    (in the torch hub cache) is read with ``weights_only=True`` unless ``trust``
    (``--trust-checkpoint``). ``input_size`` builds the ViTs (whose position embeddings
    fix it) for that size, e.g. 32 px for fast tests; other networks take any size and
    only record it. Pretrained ViT weights only fit their own size.

    Example:
        >>> build("vit_b_16", weights="none", input_size=32).meta.input_size
        32
    """
    import torchvision

    from invkit.specs import Teacher, TeacherMeta

    weights = "DEFAULT" if weights is None else weights
    if weights.lower() == "none":
        info = describe(name)
        # ViTs fix their input size at construction: build them for the metadata's size.
        extra = ({"image_size": input_size or info["input_size"]} if name.startswith("vit_")
                 else {})
        module = torchvision.models.get_model(name, weights=None,
                                              num_classes=info["num_classes"], **extra)
        label = "none"
    else:
        member = resolve_weights(name, weights)
        info = _describe_weights(member)
        if input_size and input_size != info["input_size"] and name.startswith("vit_"):
            raise InvkitError(f"{name} weights {member.name} fit {info['input_size']} px inputs "
                              f"only, not {input_size} px (use --weights none at {input_size} "
                              "px)")
        module = _with_weights(name, member, trust)
        label = f"{type(member).__name__}.{member.name}"
    meta = TeacherMeta(arch=name, input_size=input_size or info["input_size"],
                       num_classes=info["num_classes"],
                       mean=info["mean"], std=info["std"], class_names=info["class_names"],
                       weights=label, family="imagenet")
    return Teacher(module=module.eval(), meta=meta, name=name)


def _with_weights(name: str, member, trust: bool = False):
    """``name`` built by torchvision with ``member``'s weights, read safely by invkit.

    torchvision would read the cached file itself with full unpickling (its loader
    passes ``weights_only=False``), so a pickle planted in the hub cache would run. Here
    the file is read by :func:`invkit.teachers.checkpoint.read_state_dict`
    (``weights_only=True`` unless ``trust``), and torchvision's builder, which still
    applies each model's own loading rules, is handed that state dict.
    """
    import torchvision

    from invkit.teachers import checkpoint

    path = cached_file(member)
    if not path.is_file():
        if offline():
            raise _missing(name, member, "INVKIT_OFFLINE is set")
        _download(name, member, path)
    try:
        state = checkpoint.read_state_dict(path, trust=trust)
    except InvkitError as error:
        raise InvkitError(f"cannot read cached weights of {name}: {error} (if the file is "
                          "damaged, delete it to download it again)") from None
    with _state_dict_given(member, state):
        try:
            return torchvision.models.get_model(name, weights=member)
        except (RuntimeError, KeyError, ValueError) as error:  # keys or shapes do not fit
            raise InvkitError(f"cached weights {path} do not fit {name} "
                              f"({' '.join(str(error).split())[:160]}); delete the file to "
                              "download it again") from None


def _download(name: str, member, path: Path) -> None:
    """Download ``member``'s file into the hub cache (checked against the hash in its name)."""
    import torch

    match = torch.hub.HASH_REGEX.search(path.name)
    previous = socket.getdefaulttimeout()
    # A bounded wait: without a timeout an unreachable network can hang forever.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Writes a temporary file and moves it into place: never a partial cache file.
        torch.hub.download_url_to_file(member.url, str(path), match.group(1) if match else None,
                                       progress=True)
    except (OSError, RuntimeError) as error:  # URLError, timeouts, refused, bad hash
        raise _missing(name, member, f"could not be downloaded ({type(error).__name__})") \
            from None
    finally:
        socket.setdefaulttimeout(previous)


_GIVEN_LOCK = threading.Lock()


@contextlib.contextmanager
def _state_dict_given(member, state):
    """While active, ``member.get_state_dict(...)`` returns ``state`` instead of reading.

    torchvision builders load weights only through ``weights.get_state_dict`` (the
    one place that reads files), so this keeps every per-model rule (key renames,
    auxiliary heads) while invkit decides how the file is read.
    """
    cls = type(member)
    own = cls.__dict__.get("get_state_dict")
    with _GIVEN_LOCK:
        setattr(cls, "get_state_dict", lambda self, *args, **kwargs: dict(state))
        try:
            yield
        finally:
            if own is None:
                delattr(cls, "get_state_dict")
            else:
                setattr(cls, "get_state_dict", own)


def spec(name: str):
    """The TeacherSpec of torchvision model ``name``."""
    from invkit.specs import TeacherSpec

    info = describe(name)
    return TeacherSpec(
        # Short: listings show size, classes and source in their own columns.
        name, f"weights {weights_enum(name).DEFAULT.name}",
        factory=functools.partial(build, name), source="torchvision",
        input_size=info["input_size"], num_classes=info["num_classes"],
        default_weights="DEFAULT", family="imagenet", batchnorm=batchnorm(name))


def teacher_specs():
    """A TeacherSpec per torchvision classification model."""
    return [spec(name) for name in model_names()]
