"""Reading weights files into networks: safetensors, ``.pt``, ``.pth``, ``.pth.tar``.

- A file holds a bare state dict, or one under ``state_dict`` / ``model``
  (training checkpoints such as NVIDIA's ``model_best.pth.tar``).
- Key prefixes such as ``module.`` (DataParallel), ``_orig_mod.`` (torch.compile) or
  ``model.`` are stripped when that makes the keys fit the network.
- Missing, unexpected and wrongly shaped keys are reported by name, in one line.
- Pickles load with ``torch.load(weights_only=True)``; a file that needs full
  unpickling is refused unless the caller passes ``trust=True`` (``--trust-checkpoint``).
- safetensors files written by :func:`invkit.teachers.save_teacher` carry the
  teacher's metadata (arch, input size, mean/std, classes): see :func:`read_metadata`.
- A network pruned by ``invkit prune`` also records its changed layer widths
  (``pruned`` metadata): :func:`apply_pruned_structure` resizes the freshly built
  architecture to them before the weights are loaded, so no code is unpickled.

Example:
    >>> import torch
    >>> from invkit.teachers import load_teacher
    >>> trained = load_teacher("digits").module
    >>> checkpoint = {"epoch": 90, "state_dict": {f"module.{k}": v       # DataParallel
    ...                                           for k, v in trained.state_dict().items()}}
    >>> torch.save(checkpoint, "model_best.pth.tar")
    >>> state = read_state_dict("model_best.pth.tar")
    >>> network = load_into(load_teacher("digits", weights="none").module, state,
    ...                     source="model_best.pth.tar")
    >>> torch.equal(network.fc.weight, trained.fc.weight)
    True
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from invkit.errors import InvkitError

#: The metadata format written by ``save_teacher`` (a safetensors ``__metadata__`` key).
FORMAT = "invkit.teacher/1"
SUFFIXES = (".safetensors", ".pt", ".pth", ".pth.tar", ".tar", ".bin", ".ckpt")
#: Keys a checkpoint may nest its state dict under, tried in this order.
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
#: Prefixes wrappers add to every key; stripped (repeatedly) when that helps.
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "backbone.", "teacher.",
                  "encoder.")
#: The largest input size and class count a checkpoint's metadata may claim: beyond
#: these it is damaged or hostile (they size every allocation a run makes).
MAX_INPUT_SIZE = 8192
MAX_NUM_CLASSES = 1_000_000
#: How many names an error lists before it says "and N more".
SHOW = 5


def looks_like_file(value: str) -> bool:
    """Whether a ``--weights`` value names a file rather than a weights name or ``none``.

    Example:
        >>> looks_like_file("IMAGENET1K_V2"), looks_like_file("w/best.pth.tar")
        (False, True)
    """
    lowered = value.lower()
    return (os.sep in value or "/" in value or lowered.endswith(SUFFIXES)
            or Path(value).is_file())


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise InvkitError(f"weights file not found: {path}")
    if not path.is_file():
        raise InvkitError(f"weights path is not a file: {path}")


def _is_safetensors(path: Path) -> bool:
    if path.name.lower().endswith(".safetensors"):
        return True
    # Content sniffing: an 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file ({} for other files or none).

    Example:
        >>> from invkit.teachers import load_teacher, save_teacher
        >>> save_teacher(load_teacher("digits"), "digits.safetensors")
        PosixPath('digits.safetensors')
        >>> read_metadata("digits.safetensors")["arch"]
        'digits'
    """
    path = Path(path)
    _check_exists(path)
    if not _is_safetensors(path):
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise InvkitError(f"cannot read {path}: corrupted or truncated safetensors file "
                          f"({_short(error)})") from None


def read_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a weights file, keyed by name, on the CPU.

    A nested ``state_dict``/``model`` entry is unwrapped. Pickled files are read with
    ``weights_only=True`` unless ``trust`` is set.

    Example:
        >>> import torch
        >>> from invkit.teachers import load_teacher
        >>> torch.save(load_teacher("digits").module.state_dict(), "digits.pth")
        >>> sorted(read_state_dict("digits.pth"))[:2]
        ['bn1.bias', 'bn1.num_batches_tracked']
    """
    path = Path(path)
    _check_exists(path)
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise InvkitError(f"cannot read {path}: corrupted or truncated safetensors file "
                              f"({_short(error)})") from None
    return extract_state_dict(_torch_load(path, trust), path)


def _torch_load(path: Path, trust: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        if not trust and "weights_only" in str(error):
            # Only the first line of torch's long explanation: it names what was refused.
            refused = _refused_global(str(error))
            raise InvkitError(
                f"{path} needs full unpickling to load{refused}, which can run arbitrary "
                "code; if you trust this file, pass --trust-checkpoint (or convert it to "
                "safetensors)") from None
        raise InvkitError(f"cannot read {path}: corrupted or not a checkpoint "
                          f"({_short(error)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            AttributeError, ImportError, IndexError, KeyError) as error:
        raise InvkitError(f"cannot read {path}: corrupted or truncated file "
                          f"({_short(error)})") from None


def _refused_global(message: str) -> str:
    for marker in ("Unsupported global: GLOBAL ", "Unsupported global: "):
        if marker in message:
            name = message.split(marker, 1)[1].split()[0].rstrip(".,")
            return f" (it contains {name})"
    return ""


def _short(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def extract_state_dict(obj, source: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: a bare state dict or one nested under a known key.

    Example:
        >>> extract_state_dict({"epoch": 90, "state_dict": {"fc.bias": torch.zeros(2)}})
        {'fc.bias': tensor([0., 0.])}
    """
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise InvkitError(f"{source} holds a {type(obj).__name__}, not a state dict")
    for key in NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            return dict(inner.state_dict())
        if isinstance(inner, Mapping) and inner and _mostly_tensors(inner):
            return {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    if obj and _mostly_tensors(obj):
        return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    keys = ", ".join(map(str, list(obj)[:SHOW])) or "none"
    raise InvkitError(f"{source} has no state dict (looked for a bare one and under "
                      f"{'/'.join(NESTED_KEYS[:2])}; its keys: {keys})")


def _mostly_tensors(mapping: Mapping) -> bool:
    values = list(mapping.values())
    return sum(isinstance(v, torch.Tensor) for v in values) * 2 >= len(values) > 0


def strip_prefixes(state: Mapping[str, torch.Tensor], expected: set[str]
                   ) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``, ...) when that fits ``expected``.

    Prefixes are stripped one at a time, each only if it increases the number of
    keys that match ``expected``; keys already matching are never changed.

    Example:
        >>> import torch
        >>> t = torch.zeros(10)
        >>> sorted(strip_prefixes({"module.fc.bias": t}, {"fc.bias"}))
        ['fc.bias']
    """
    state = dict(state)

    def score(candidate: Mapping) -> int:
        return len(expected.intersection(candidate))

    while True:
        best, best_score = None, score(state)
        moves = [_strip_known] + [_strip_one(p) for p in _candidate_prefixes(state)]
        for move in moves:
            moved = {(k if k in expected else move(k)): v for k, v in state.items()}
            if len(moved) == len(state) and score(moved) > best_score:
                best, best_score = moved, score(moved)
        if best is None:
            return state
        state = best


def _strip_known(key: str) -> str:
    """Remove every known wrapper prefix at the start of ``key`` (``module._orig_mod.x``)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in KNOWN_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key, stripped = key[len(prefix):], True
    return key


def _strip_one(prefix: str):
    return lambda key: key[len(prefix):] if key.startswith(prefix) else key


def _candidate_prefixes(state: Mapping[str, torch.Tensor]) -> list[str]:
    firsts = {k.split(".", 1)[0] + "." for k in state if "." in k}
    return sorted(set(KNOWN_PREFIXES) | {p for p in firsts if len(firsts) <= 3})


def _names(keys, limit: int = SHOW) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str,
              arch: str = "the network", rename: Callable[[str], str] | None = None) -> nn.Module:
    """Load ``state`` into ``module`` strictly, after renaming and prefix stripping.

    Missing BatchNorm ``num_batches_tracked`` buffers (absent from old checkpoints)
    are tolerated; every other missing, unexpected or wrongly shaped key is an
    :class:`InvkitError` naming the keys.

    Example:
        >>> import torch
        >>> from invkit.teachers import load_teacher
        >>> torch.save(load_teacher("digits").module.state_dict(), "digits.pth")
        >>> network = load_teacher("digits", weights="none").module
        >>> network = load_into(network, read_state_dict("digits.pth"), source="digits.pth",
        ...                     arch="digits")
        >>> del network.fc.bias                         # a network with one key fewer
        >>> load_into(network, read_state_dict("digits.pth"), source="digits.pth",
        ...           arch="digits")
        Traceback (most recent call last):
        invkit.errors.InvkitError: weights digits.pth do not fit digits: 1 unexpected (fc.bias)
        - is it a checkpoint of another architecture? (choose it with --arch)
    """
    target = module.state_dict()
    expected = set(target)
    if rename is not None:
        state = {rename(k): v for k, v in state.items()}
    state = strip_prefixes(state, expected)
    missing = {k for k in expected - set(state) if not k.endswith("num_batches_tracked")}
    unexpected = set(state) - expected
    wrong = {k: (tuple(state[k].shape), tuple(target[k].shape)) for k in expected & set(state)
             if tuple(state[k].shape) != tuple(target[k].shape)}
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            shapes = "; ".join(f"{k}: file {f} vs network {n}"
                               for k, (f, n) in sorted(wrong.items())[:SHOW])
            more = f" and {len(wrong) - SHOW} more" if len(wrong) > SHOW else ""
            parts.append(f"{len(wrong)} with the wrong shape ({shapes}{more})")
        if missing:
            parts.append(f"{len(missing)} missing ({_names(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
        raise InvkitError(f"weights {source} do not fit {arch}: " + "; ".join(parts)
                          + " - is it a checkpoint of another architecture? (choose it "
                          "with --arch)")
    # Fill the tolerated BatchNorm counters from the network so strict loading works.
    full = {k: state.get(k, target[k]) for k in target}
    with torch.no_grad():
        module.load_state_dict(full, strict=True)
    return module


#: The metadata key of a pruned network's changed layer widths (see invkit.prune).
PRUNED_KEY = "pruned"


def apply_pruned_structure(module: nn.Module, metadata: Mapping[str, str] | None, *,
                           source: str = "checkpoint") -> nn.Module:
    """Resize ``module``'s conv, linear and BatchNorm layers to the widths a pruned file
    records (``metadata["pruned"]``: ``{name: {"type", "in", "out"[, "groups"]}}``); a file
    without that key leaves ``module`` unchanged. The new tensors are uninitialised: the
    caller loads the file's weights into them (which checks every shape).

    Example:
        >>> from invkit.teachers import load_teacher
        >>> net = load_teacher("digits", weights="none").module
        >>> net = apply_pruned_structure(net, {"pruned": '{"conv1": {"type": "Conv2d", '
        ...                              '"in": 3, "out": 11, "groups": 1}}'})
        >>> net.conv1
        Conv2d(3, 11, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    if not metadata or PRUNED_KEY not in metadata:
        return module
    try:
        structure = json.loads(metadata[PRUNED_KEY])
        layers = dict(module.named_modules())
        for name, shape in structure.items():
            if name not in layers:
                raise KeyError(f"no layer {name!r} in the network")
            _resize(layers[name], shape)
    except (KeyError, ValueError, TypeError) as error:
        raise InvkitError(f"{source}: its pruned structure does not fit the network "
                          f"({_short(error)})") from None
    return module


def changed_layers(reference: nn.Module, module: nn.Module) -> dict[str, dict]:
    """The conv, linear and BatchNorm layers of ``module`` whose widths differ from the same
    layers of ``reference`` (its architecture as built), by module name: what
    :func:`apply_pruned_structure` needs to rebuild it.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> pruned_net = apply_pruned_structure(
        ...     load_teacher("digits", weights="none").module,
        ...     {"pruned": '{"conv1": {"type": "Conv2d", "in": 3, "out": 11, "groups": 1}}'})
        >>> reference = load_teacher("digits", weights="none").module
        >>> changed_layers(reference, pruned_net)["conv1"]
        {'type': 'Conv2d', 'in': 3, 'out': 11, 'groups': 1}
    """
    before = {n: _layer_shape(m) for n, m in reference.named_modules()}
    return {name: shape for name, layer in module.named_modules()
            if (shape := _layer_shape(layer)) is not None and shape != before.get(name)}


def _layer_shape(layer: nn.Module) -> dict | None:
    if isinstance(layer, nn.Conv2d):
        return {"type": "Conv2d", "in": layer.in_channels, "out": layer.out_channels,
                "groups": layer.groups}
    if isinstance(layer, nn.Linear):
        return {"type": "Linear", "in": layer.in_features, "out": layer.out_features}
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return {"type": type(layer).__name__, "in": layer.num_features,
                "out": layer.num_features}
    return None


def _resize(layer: nn.Module, shape: Mapping) -> None:
    kind, cin, cout = shape["type"], int(shape["in"]), int(shape["out"])
    if type(layer).__name__ != kind:
        raise TypeError(f"layer is a {type(layer).__name__}, the file says {kind}")
    empty = functools.partial(torch.empty, device=_device_of(layer))
    if isinstance(layer, nn.Conv2d):
        layer.in_channels, layer.out_channels = cin, cout
        layer.groups = int(shape.get("groups", layer.groups))
        layer.weight = nn.Parameter(empty(cout, cin // layer.groups, *layer.kernel_size))
        if layer.bias is not None:
            layer.bias = nn.Parameter(empty(cout))
    elif isinstance(layer, nn.Linear):
        layer.in_features, layer.out_features = cin, cout
        layer.weight = nn.Parameter(empty(cout, cin))
        if layer.bias is not None:
            layer.bias = nn.Parameter(empty(cout))
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
        layer.num_features = cout
        if layer.affine:
            layer.weight, layer.bias = nn.Parameter(empty(cout)), nn.Parameter(empty(cout))
        if layer.track_running_stats:
            layer.running_mean, layer.running_var = empty(cout), empty(cout)


def _device_of(layer: nn.Module) -> torch.device:
    return next((p.device for p in layer.parameters()), torch.device("cpu"))


def teacher_metadata(meta, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A :class:`~invkit.specs.TeacherMeta` as safetensors metadata (strings only)."""
    out = {
        "format": FORMAT,
        "arch": meta.arch,
        "input_size": str(meta.input_size),
        "num_classes": str(meta.num_classes),
        "mean": json.dumps(list(meta.mean)),
        "std": json.dumps(list(meta.std)),
        "class_names": json.dumps(list(meta.class_names) if meta.class_names else None),
        "grayscale": json.dumps(bool(meta.grayscale)),
        "family": json.dumps(meta.family),
    }
    out.update(extra or {})
    return out


def meta_from_metadata(metadata: Mapping[str, str], source: str | os.PathLike, weights: str,
                       fallback=None):
    """The :class:`~invkit.specs.TeacherMeta` stored by :func:`teacher_metadata`.

    ``grayscale`` and ``family`` absent from the file (written before they existed) come
    from ``fallback`` (the architecture's own metadata) when given.
    """
    from invkit.specs import TeacherMeta

    try:
        names = json.loads(metadata.get("class_names") or "null")
        meta = TeacherMeta(
            arch=metadata["arch"], input_size=int(metadata["input_size"]),
            num_classes=int(metadata["num_classes"]),
            mean=tuple(float(v) for v in json.loads(metadata["mean"])),
            std=tuple(float(v) for v in json.loads(metadata["std"])),
            class_names=tuple(str(n) for n in names) if names else None, weights=weights,
            # Absent in files written before these fields existed.
            grayscale=(bool(json.loads(metadata["grayscale"])) if "grayscale" in metadata
                       else bool(fallback and fallback.grayscale)),
            family=(json.loads(metadata["family"]) if "family" in metadata
                    else fallback.family if fallback else None))
    except (KeyError, ValueError, TypeError) as error:
        raise InvkitError(f"{source} has incomplete invkit metadata ({_short(error)}); "
                          "pass --arch NAME to load it into a known network") from None
    _check_meta(meta, source)
    return meta


def _check_meta(meta, source) -> None:
    """Refuse metadata no real network has (it sizes every later allocation)."""
    problems = []
    if not 1 <= meta.input_size <= MAX_INPUT_SIZE:
        problems.append(f"input_size {meta.input_size} (allowed 1..{MAX_INPUT_SIZE})")
    if not 1 <= meta.num_classes <= MAX_NUM_CLASSES:
        problems.append(f"num_classes {meta.num_classes} (allowed 1..{MAX_NUM_CLASSES})")
    if meta.class_names is not None and len(meta.class_names) != meta.num_classes:
        problems.append(f"{len(meta.class_names)} class names for {meta.num_classes} classes")
    values = (*meta.mean, *meta.std)
    if not all(math.isfinite(v) for v in values) or not all(v > 0 for v in meta.std):
        problems.append(f"mean {list(meta.mean)} / std {list(meta.std)} (finite, std > 0)")
    if len(meta.mean) not in (1, 3) or len(meta.std) != len(meta.mean):
        problems.append(f"{len(meta.mean)} mean and {len(meta.std)} std values (1 or 3 each)")
    if problems:
        raise InvkitError(f"{source} has implausible metadata: {'; '.join(problems)} "
                          "(the file is damaged, or was not written by invkit)")


def has_teacher_metadata(metadata: Mapping[str, str]) -> bool:
    return metadata.get("format", "").startswith("invkit.teacher/") and "arch" in metadata


def state_dict_bytes(module: nn.Module, metadata: Mapping[str, str]) -> bytes:
    """``module``'s state dict as safetensors bytes (tensors copied: no shared storage)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in
               module.state_dict().items()}
    return save(tensors, metadata=dict(metadata))
