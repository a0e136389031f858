"""Every timm classifier as a teacher: ``timm:NAME`` (needs ``pip install 'invkit[timm]'``).

``NAME`` is a timm architecture (``timm:vit_tiny_patch16_224``) or an architecture with
a pretrained tag (``timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k``). Input size,
mean/std and class count come from timm's pretrained config, read without
downloading anything. Architectures whose default pretrained config has no classifier
(0 classes: self-supervised or CLIP-style pretraining) are not listed, and naming one
says which of its tags are classifiers.

``--weights``: ``none`` for random initialisation; a weights file (loaded by
:func:`invkit.teachers.load_teacher` with invkit's safe reader); nothing (or
``DEFAULT``) for the pretrained weights, which are read from the Hugging Face hub
cache (timm keeps its weights there); ``--weights TAG`` picks another pretrained tag.
A download is tried only when the file is not cached and ``INVKIT_OFFLINE`` is unset;
on failure the error names the file, where it goes, and ``--weights FILE``.

timm is imported only when a ``timm:`` teacher is asked for (importing it takes
seconds), so ``invkit teachers list`` stays fast; it lists timm models only when an
``--include`` pattern starts with ``timm:``.

Example:
    >>> teacher = build("vit_tiny_patch16_224", weights="none", input_size=32)
    >>> teacher.meta.input_size, teacher.meta.num_classes
    (32, 1000)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from invkit.errors import InvkitError, unknown

PREFIX = "timm:"
INSTALL = "pip install 'invkit[timm]'"
#: Files timm looks for in a Hugging Face weights repository, in its order.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm():
    try:
        import timm
    except ImportError:
        raise InvkitError(f"timm teachers need the timm package: {INSTALL}") from None
    return timm


def available() -> bool:
    """Whether timm is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("timm") is not None


@functools.cache
def _all_configs() -> dict:
    """Default pretrained config of every timm architecture (about 0.2 s: no downloads)."""
    timm = _timm()
    from timm.models import get_pretrained_cfg

    return {name: get_pretrained_cfg(name) for name in timm.list_models()}


@functools.cache
def model_names() -> tuple[str, ...]:
    """Every timm architecture whose default pretrained config is a classifier."""
    return tuple(n for n, cfg in _all_configs().items() if cfg is not None and cfg.num_classes)


def _config(name: str):
    """timm's pretrained config for ``NAME`` or ``NAME.TAG``; one-line errors otherwise."""
    arch, _, tag = name.partition(".")
    configs = _all_configs()
    if arch not in configs:
        raise unknown("teacher", f"{PREFIX}{name}", [f"{PREFIX}{n}" for n in model_names()])
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name) if tag else configs[arch]
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None:
        raise InvkitError(f"timm has no pretrained tag {tag!r} for {arch} (valid: "
                          f"{', '.join(_tags(arch)) or 'none'})")
    if not cfg.num_classes:
        tags = [t for t in _tags(arch) if get_pretrained_cfg(f"{arch}.{t}").num_classes]
        hint = (f"name a classifier tag, e.g. {PREFIX}{arch}.{tags[0]} (classifier tags: "
                f"{', '.join(tags)})") if tags else "timm has no classifier weights for it"
        raise InvkitError(f"{PREFIX}{name} has no classifier head in timm's pretrained config "
                          f"(0 classes): {hint}")
    return cfg


def _tags(arch: str) -> list[str]:
    timm = _timm()
    return [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]


def describe(name: str) -> dict:
    """Input size, class count, mean/std and class names from timm's pretrained config.

    Example:
        >>> describe("resnet18")["mean"]
        (0.485, 0.456, 0.406)
    """
    cfg = _config(name)
    from timm.data import resolve_data_config

    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    return {"input_size": int(data["input_size"][1]), "num_classes": int(cfg.num_classes),
            "mean": tuple(float(v) for v in data["mean"]),
            "std": tuple(float(v) for v in data["std"]), "class_names": _class_names(cfg),
            "hf_hub_id": cfg.hf_hub_id or None, "hf_hub_filename": cfg.hf_hub_filename,
            "url": cfg.url or None, "tag": cfg.tag}


def _class_names(cfg) -> tuple[str, ...] | None:
    """Short class names (``tench``) for the ImageNet subsets timm knows, else None."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(cfg)
        if not subset:
            return None
        names = ImageNetInfo(subset).label_descriptions()
    except Exception:  # noqa: BLE001 - class names are a nicety; the teacher works without
        return None
    if len(names) != cfg.num_classes:
        return None
    return tuple(n.split(",")[0].strip() for n in names)


@functools.cache
def batchnorm(name: str) -> bool | None:
    """Whether timm model ``name`` has BatchNorm layers, by building it on the ``meta``
    device (no memory, about 0.1-0.5 s); None if it cannot be built there.

    Example:
        >>> batchnorm("resnet18"), batchnorm("vit_tiny_patch16_224")
        (True, False)
    """
    import torch

    from invkit.teachers import has_batchnorm

    _config(name)
    try:
        with torch.device("meta"):
            module = _timm().create_model(name.partition(".")[0], pretrained=False)
    except Exception:  # noqa: BLE001 - unknown is an honest answer
        return None
    return has_batchnorm(module)


def spec(name: str, with_batchnorm: bool = False):
    """The TeacherSpec of ``timm:NAME``; ``with_batchnorm`` fills ``batchnorm`` by building
    the network on the meta device (one spec at a time, not for listings)."""
    from invkit.specs import TeacherSpec

    info = describe(name)
    return TeacherSpec(
        # Short: listings show size, classes and source in their own columns.
        f"{PREFIX}{name}", f"weights {info['tag']}" if info["hf_hub_id"] or info["url"]
        else "no pretrained weights",
        factory=functools.partial(build, name), source="timm",
        input_size=info["input_size"], num_classes=info["num_classes"],
        default_weights="DEFAULT", family="imagenet" if info["num_classes"] == 1000 else None,
        batchnorm=batchnorm(name) if with_batchnorm else None)


def teacher_specs(include=None, exclude=None) -> list:
    """TeacherSpecs of the timm classifiers whose ``timm:NAME`` matches the shell patterns
    (``batchnorm`` left unknown: building 1,200 networks to look would take minutes)."""
    from fnmatch import fnmatchcase

    names = [f"{PREFIX}{n}" for n in model_names()]
    names = [n for n in names if not include or any(fnmatchcase(n, p) for p in include)]
    names = [n for n in names if not any(fnmatchcase(n, p) for p in exclude or ())]
    return [spec(n[len(PREFIX):]) for n in names]


def build(name: str, weights: str | None = None, input_size: int | None = None):
    """A timm classifier as a :class:`~invkit.specs.Teacher`.

    ``weights``: ``None``/``"DEFAULT"`` (pretrained, from the hub cache), a pretrained
    tag, or ``"none"``. ``input_size`` builds networks with a fixed input size (ViTs)
    for that size; other networks accept any size and only record it.

    Example:
        >>> build("resnet18", weights="none").meta.input_size
        224
    """
    from invkit.specs import Teacher, TeacherMeta
    from invkit.teachers.checkpoint import load_into, read_state_dict

    if weights is not None and weights.lower() not in ("none", "default"):
        name = f"{name.partition('.')[0]}.{weights}"  # a pretrained tag
    info = describe(name)
    arch = name.partition(".")[0]
    module = _create(arch, info["num_classes"], input_size)
    if weights is not None and weights.lower() == "none":
        label = "none"
    else:
        path = _pretrained_file(name, info)
        load_into(module, read_state_dict(path), source=str(path), arch=f"{PREFIX}{name}")
        label = f"{info['hf_hub_id']}"
    meta = TeacherMeta(arch=f"{PREFIX}{arch}", input_size=input_size or info["input_size"],
                       num_classes=info["num_classes"], mean=info["mean"], std=info["std"],
                       class_names=info["class_names"], weights=label,
                       family="imagenet" if info["num_classes"] == 1000 else None)
    return Teacher(module=module.eval(), meta=meta, name=f"{PREFIX}{name}")


def _create(arch: str, num_classes: int, input_size: int | None):
    timm = _timm()
    if input_size is None:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    try:
        # Transformers fix their input size (position embeddings) at construction.
        return timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                 img_size=input_size)
    except TypeError:  # a network without an img_size argument takes any size
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def offline() -> bool:
    return os.environ.get("INVKIT_OFFLINE", "") not in ("", "0")


def _pretrained_file(name: str, info: dict) -> Path:
    """The cached pretrained weights file of ``name``, downloading it if allowed."""
    repo = info["hf_hub_id"]
    if not repo and not info["url"]:
        raise InvkitError(f"timm has no pretrained weights for {name} (its config is "
                          f"{info['tag'] or 'untrained'!r}): pass --weights FILE, or --weights "
                          "none for random init")
    if not repo:
        raise InvkitError(f"{PREFIX}{name}'s pretrained weights are not on the Hugging Face hub "
                          f"(timm fetches them from {info['url'] or 'nowhere'}): download that "
                          "file and pass --weights FILE (or --weights none for random init)")
    repo, _, revision = repo.partition("@")
    files = (info["hf_hub_filename"],) if info["hf_hub_filename"] else HUB_FILES
    from huggingface_hub import try_to_load_from_cache

    for filename in files:
        cached = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(cached, str):
            return Path(cached)
    if offline():
        raise _missing(name, repo, files[0], "INVKIT_OFFLINE is set")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, files[0], revision=revision or None))
    except Exception as error:  # noqa: BLE001 - offline, refused, timed out, not found
        raise _missing(name, repo, files[0],
                       f"could not be downloaded ({type(error).__name__})") from None


def _missing(name: str, repo: str, filename: str, reason: str) -> InvkitError:
    from huggingface_hub.constants import HF_HUB_CACHE

    return InvkitError(
        f"timm weights for {name} are not in the Hugging Face cache ({HF_HUB_CACHE}) and "
        f"{reason}: download {filename} from https://huggingface.co/{repo} and pass --weights "
        f"FILE, or cache it there with 'hf download {repo} {filename}' (--weights none for "
        "random init)")
