"""Data-free continual learning: add new classes to a trained network without its old data.

DeepInversion's third use (Yin et al. 2020, section 4.4). The old network ``f_old``
(classes O) is copied into ``f_new`` with its classification head widened to O + N
classes; the old weights and the old head rows are kept, the new rows start fresh.
``f_new`` is then trained on three terms, each with a weight (``ExtendConfig``):

- ``ce_weight`` x cross-entropy over all O + N classes on the real images of the new
  classes N;
- ``replay_weight`` x ``T^2 KL(f_old(x) || f_new(x)[O])`` at temperature T on *replay*
  images: images generated from ``f_old`` (DeepInversion) that stand in for O's data.
  ``f_new(x)[O]`` is the old classes' share of ``f_new``'s softmax over *all* classes
  (``replay_softmax="all"``, the default): the term then also pushes the new classes'
  probability down on images of old classes. Without that (``"old"``: a softmax over
  the old logits alone) nothing in the loss stops the new classes, whose logits the
  cross-entropy keeps raising, from taking over old-class images;
- ``lwf_weight`` x ``T^2 KL`` between ``f_old`` and the softmax over ``f_new``'s old
  logits alone, on the new images (as Learning without Forgetting does: there the new
  classes must win).

Two remedies for the new classes taking over old-class images, both off by default:
``head_ce_weight`` x a cross-entropy over all classes on the new and replay images
through the head alone, on features whose gradient is stopped (*Always Be Dreaming*,
Smith et al. 2021; with ``new_ce="new"`` and ``replay_softmax="old"`` no term asks the
rest of the network to tell old from new, so it is not taught to tell generated
images from real ones); and ``align_head``, Weight Aligning (Zhao et al. 2020) after
training (:func:`align_new_rows`).

With no replay images it is LwF alone; with ``distill=False`` plain fine-tuning
(cross-entropy on the new images only), which forgets the old classes. Every step
feeds one batch of new images and one of replay images (cycled in a fresh order when
used up) through ``f_new`` together, so its BatchNorm statistics keep seeing the old
classes too; an epoch is one pass over the new images. Augmentation, optimiser, the
learning-rate plan and the KD loss are :mod:`invkit.distill`'s.

Example:
    >>> from invkit.teachers import load_teacher
    >>> from invkit.teachers.digits import digits_dataset
    >>> from invkit.output import save_png
    >>> images, labels = digits_dataset("heldout")   # here: a few digits stand in
    >>> for i in range(8):      # for two new classes A, B and for replay images
    ...     _ = save_png(f"real/new/{'AB'[i % 2]}/{i}.png", images[i])
    ...     _ = save_png(f"generations/old/{labels[i]:03d}/{i}.png", images[i])
    >>> teacher = load_teacher("digits")                              # classes 0-9
    >>> new = load_new_classes("real/new", teacher)                   # folders A, B
    >>> replay = load_replay(["generations/old"], teacher)
    >>> from invkit.distill import DistillConfig
    >>> config = ExtendConfig(training=DistillConfig(epochs=1, batch_size=8))   # 1 epoch here
    >>> result = extend(teacher, new, replay, config=config,
    ...                 test=load_extend_test("digits", combined_names(teacher, new)))
    >>> result.final["test_acc_old"], result.final["test_acc_new"]   # no A/B test images
    (..., None)
    >>> save_extended(result, "runs/digits12")
    PosixPath('runs/digits12/extended.safetensors')
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from invkit.data import (
    IMAGE_SUFFIXES, class_folders, find_layout, load_image_dataset, load_imagefolder,
    load_test_data, to_float01,
)
from invkit.distill import (
    DistillConfig, augment, kd_loss, lr_plan, make_optimizer, shuffled_batches,
)
from invkit.errors import InvkitError
from invkit.evaluate import predict_logits
from invkit.output import write_json
from invkit.progress import ProgressDisplay
from invkit.specs import Teacher

WEIGHTS_FILE = "extended.safetensors"
REPORT_FILE = "extend.json"
REPLAY_SOFTMAX = ("all", "old")
NEW_CE = ("all", "new")


@dataclass(frozen=True)
class ExtendConfig:
    """Settings of :func:`extend`: the training recipe (a :class:`DistillConfig`: epochs,
    batch size, optimiser, learning rate, temperature T, augmentation, seed) and the
    loss weights.

    ``replay_batch_size=None`` uses ``training.batch_size``. ``distill=False`` is plain
    fine-tuning: cross-entropy on the new images only (no replay, no KL terms).
    ``head`` names the classification layer (``"fc"``); by default the last nn.Linear.
    ``replay_softmax``: ``"all"`` or ``"old"``, the softmax the replay term compares
    with the teacher's (see the module's docstring). Options beyond the paper's loss,
    off by default: ``replay_ce_weight`` adds a cross-entropy over all classes on the
    replay images with the teacher's predicted class as the label; ``new_ce="new"``
    computes the new images' cross-entropy over the new logits alone;
    ``backbone_lr_scale`` scales the learning rate of every layer but the head (0
    freezes them, BatchNorm statistics included).

    Two remedies for a head biased towards the new classes (off by default, see the
    README's benchmark): ``head_ce_weight`` adds *Always Be Dreaming*'s (Smith et al.
    2021) head-only cross-entropy: over all classes, on the new images (their labels)
    and the replay images (the teacher's predicted class), through the head alone on
    the penultimate features with their gradient stopped, so the rest of the network is
    not trained to tell generated images from real ones; pair it with ``new_ce="new"``
    (their local cross-entropy). ``align_head`` applies Weight Aligning (Zhao et al.
    2020) after training: :func:`align_new_rows`.

    Example:
        >>> from invkit.distill import DistillConfig
        >>> ExtendConfig(training=DistillConfig(epochs=10, lr=0.01, flip=False), lwf_weight=0.5)
        ExtendConfig(training=DistillConfig(epochs=10, ...), ce_weight=1.0, replay_weight=1.0,
                     lwf_weight=0.5, distill=True, ...)
    """

    # Tuned on benchmarks/digits_extend.py (probes on 200-500 of its replay images, 15
    # epochs; held-out accuracy on the old classes): lr 0.01 and T = 1 kept 56%, lr 0.003
    # and T = 2 67%, lr 0.003 and T = 1 81-83%. The network is already trained: a lower
    # rate than distillation's lets the old classes drift less.
    training: DistillConfig = field(default_factory=lambda: DistillConfig(
        epochs=20, lr=0.003, temperature=1.0))
    ce_weight: float = 1.0
    replay_weight: float = 1.0
    lwf_weight: float = 1.0
    distill: bool = True
    replay_batch_size: int | None = None
    head: str | None = None
    replay_softmax: str = "all"
    replay_ce_weight: float = 0.0
    new_ce: str = "all"
    backbone_lr_scale: float = 1.0
    head_ce_weight: float = 0.0
    align_head: bool = False

    def __post_init__(self):
        if self.replay_softmax not in REPLAY_SOFTMAX:
            raise InvkitError(f"replay_softmax {self.replay_softmax!r} is not one of: "
                              f"{', '.join(REPLAY_SOFTMAX)}")
        if self.new_ce not in NEW_CE:
            raise InvkitError(f"new_ce {self.new_ce!r} is not one of: {', '.join(NEW_CE)}")
        for name in ("ce_weight", "replay_weight", "lwf_weight", "replay_ce_weight",
                     "backbone_lr_scale", "head_ce_weight"):
            if not getattr(self, name) >= 0:
                raise InvkitError(f"{name}={getattr(self, name)} must be 0 or more")
        if not self.distill and self.head_ce_weight > 0:
            raise InvkitError("head_ce_weight (the head-only cross-entropy) needs distillation: "
                              "plain fine-tuning trains the whole network on the new images")
        if self.replay_batch_size is not None and self.replay_batch_size < 1:
            raise InvkitError(f"replay_batch_size={self.replay_batch_size} must be at least 1")


@dataclass(frozen=True, eq=False)
class NewClasses:
    """Real images of the classes to add: uint8 (N, 3, H, W), targets 0..len(names)-1
    (positions in ``names``), and the class names (from the folder names)."""

    images: torch.Tensor
    targets: torch.Tensor
    names: tuple[str, ...]
    source: str = ""


@dataclass
class ExtendResult:
    """What :func:`extend` returns: the extended network and its learning curve."""

    network: Teacher
    config: ExtendConfig
    old_classes: int
    mode: str
    history: list[dict] = field(default_factory=list)
    teacher_test_acc_old: float | None = None
    seconds: float = 0.0
    alignment: dict | None = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    def summary(self) -> dict:
        """A JSON-ready record (what ``extend.json`` holds, less the caller's extras)."""
        names = self.network.meta.class_names or ()
        final = {k: self.final.get(k) for k in ("test_acc", "test_acc_old", "test_acc_new")}
        return {
            "network": self.network.name,
            "arch": self.network.meta.arch,
            "mode": self.mode,
            "config": dataclasses.asdict(self.config),
            "old_classes": list(names[:self.old_classes]),
            "new_classes": list(names[self.old_classes:]),
            "class_names": list(names),
            "teacher_test_acc_old": self.teacher_test_acc_old,
            "alignment": self.alignment,
            "final": final,
            "seconds": round(self.seconds, 2),
            "epochs": self.history,
        }


# ---------------------------------------------------------------------------- classes


def class_names_of(teacher: Teacher) -> tuple[str, ...]:
    """The teacher's class names, or ``"0"``, ``"1"``, ... where it records none."""
    names = teacher.meta.class_names
    if names and len(names) == teacher.meta.num_classes:
        return tuple(names)
    return tuple(str(i) for i in range(teacher.meta.num_classes))


def _key(name: str) -> str:
    # Folder names are sanitised ("tench, Tinca tinca" -> "tench_Tinca_tinca"): compare
    # letters and digits only, case-insensitively.
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def _folder_name(folder) -> str:
    return folder.name or folder.path.name


def combined_names(teacher: Teacher, new: NewClasses) -> tuple[str, ...]:
    """Class names of the extended network: the teacher's, then the new ones."""
    return class_names_of(teacher) + new.names


def widen(teacher: Teacher, new_names: Sequence[str], head: str | None = None) -> Teacher:
    """A copy of ``teacher`` with its head widened by ``len(new_names)`` classes.

    Every old weight, old head rows included, is kept, so the old classes' logits are
    unchanged; the new rows are initialised as ``nn.Linear`` does (torch's global
    generator). The metadata records the combined class names.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> wide = widen(load_teacher("digits"), ["A", "B"])
        >>> wide.meta.num_classes, wide.meta.class_names[-2:]
        (12, ('A', 'B'))
    """
    from invkit.teachers.heads import find_head, set_submodule, widen_linear

    module = copy.deepcopy(teacher.module)
    name, layer = find_head(module, teacher.meta.num_classes, head)
    total = teacher.meta.num_classes + len(new_names)
    set_submodule(module, name, widen_linear(layer, total))
    for p in module.parameters():
        p.requires_grad_(True)
    meta = dataclasses.replace(teacher.meta, num_classes=total,
                               class_names=class_names_of(teacher) + tuple(new_names))
    return Teacher(module=module.eval(), meta=meta, name=f"{teacher.name}+{len(new_names)}")


# ------------------------------------------------------------------------------- data


def _check_size(images: torch.Tensor, teacher: Teacher, what: str) -> None:
    size = teacher.meta.input_size
    if tuple(images.shape[-2:]) != (size, size):
        raise InvkitError(f"{what} holds {images.shape[-1]}x{images.shape[-2]} images but "
                          f"teacher {teacher.name!r} takes {size}x{size}: resize them first")


def load_new_classes(directory: Path | str, teacher: Teacher) -> NewClasses:
    """The real images of the new classes: an ImageFolder with one folder per class,
    named by class (``cat/``, ``5/``, ``007_cat/``). Refuses an empty folder, a class
    the teacher already has (compared by name), and images of another size than the
    teacher's input.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> from invkit.output import save_png
        >>> images, labels = digits_dataset("heldout")   # here: a few digits stand in
        >>> for i in range(8):      # for two new classes A, B and for replay images
        ...     _ = save_png(f"real/new/{'AB'[i % 2]}/{i}.png", images[i])
        ...     _ = save_png(f"generations/old/{labels[i]:03d}/{i}.png", images[i])
        >>> teacher = load_teacher("digits")                              # classes 0-9
        >>> new = load_new_classes("real/new", teacher)                   # folders A, B
        >>> new.names, new.images.shape
        (('A', 'B'), torch.Size([8, 3, 32, 32]))
    """
    directory = Path(directory)
    layout, root = find_layout(directory)
    if layout != "imagefolder":
        raise InvkitError(f"new data {str(directory)!r} holds shards; it must be an ImageFolder "
                          "(one folder per new class, named by class)")
    folders = class_folders(root)
    old = {_key(n): n for n in class_names_of(teacher)}
    names = []
    for folder in folders:
        name = _folder_name(folder)
        if not any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                   for f in folder.path.iterdir()):
            raise InvkitError(f"class folder {str(folder.path)!r} of the new data holds no images")
        if _key(name) in old:
            raise InvkitError(f"new class {name!r} ({str(folder.path)!r}) is already one of "
                              f"teacher {teacher.name!r}'s classes ({old[_key(name)]!r}); the "
                              "new data must hold only classes the teacher does not know")
        names.append(name)
    if len({_key(n) for n in names}) != len(names):
        raise InvkitError(f"new data {str(directory)!r} names a class twice: {', '.join(names)}")
    images, indices = load_imagefolder(root)
    _check_size(images, teacher, f"new data {str(directory)!r}")
    position = {f.index: i for i, f in enumerate(folders)}
    targets = torch.tensor([position[int(i)] for i in indices], dtype=torch.int64)
    return NewClasses(images=images, targets=targets, names=tuple(names), source=str(directory))


def load_replay(dirs: Sequence[Path | str], teacher: Teacher) -> torch.Tensor:
    """Replay images (uint8) generated from ``teacher``: generated run directories,
    ImageFolders or shards. Their classes must be the teacher's: indices within its
    classes and, where the folders carry names, the teacher's name at that index.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> from invkit.output import save_png
        >>> images, labels = digits_dataset("heldout")   # here: a few digits stand in
        >>> for i in range(8):      # for two new classes A, B and for replay images
        ...     _ = save_png(f"real/new/{'AB'[i % 2]}/{i}.png", images[i])
        ...     _ = save_png(f"generations/old/{labels[i]:03d}/{i}.png", images[i])
        >>> teacher = load_teacher("digits")                              # classes 0-9
        >>> new = load_new_classes("real/new", teacher)                   # folders A, B
        >>> load_replay(["generations/old"], teacher).shape
        torch.Size([8, 3, 32, 32])
    """
    names = class_names_of(teacher)
    for directory in dirs:
        layout, root = find_layout(Path(directory))
        if layout != "imagefolder":
            continue
        for folder in class_folders(root):
            if not 0 <= folder.index < len(names):
                raise InvkitError(f"replay data {str(directory)!r} has class {folder.index} "
                                  f"({folder.path.name!r}) but teacher {teacher.name!r} has "
                                  f"{len(names)} classes: replay images must be generated "
                                  "from the teacher being extended")
            if folder.name and _key(folder.name) != _key(names[folder.index]):
                raise InvkitError(f"replay class folder {folder.path.name!r} in "
                                  f"{str(directory)!r} is not teacher {teacher.name!r}'s class "
                                  f"{folder.index} ({names[folder.index]!r}): replay images "
                                  "must be generated from the teacher being extended")
    images, targets = load_image_dataset(dirs)
    bad = targets[(targets < 0) | (targets >= len(names))]
    if bad.numel():
        raise InvkitError(f"replay data holds class {int(bad[0])} but teacher {teacher.name!r} "
                          f"has {len(names)} classes: replay images must be generated from "
                          "the teacher being extended")
    _check_size(images, teacher, f"replay data {', '.join(map(str, dirs))}")
    return images


def load_extend_test(spec: str | Path, class_names: Sequence[str], size: int | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Real test images with targets in the extended network's classes.

    ``spec`` is ``"digits"`` (the held-out digits split) or a directory. Classes are
    matched by name (``"5"``, ``"007_cat"`` -> ``"cat"``); a folder named by an index
    alone that matches no name keeps its index; shards keep their targets.

    Example:
        >>> images, targets = load_extend_test("digits", [str(i) for i in range(10)])
    """
    keys = {_key(n): i for i, n in enumerate(class_names)}
    if str(spec) == "digits":
        from invkit.teachers.digits import CLASS_NAMES

        source = dict(enumerate(CLASS_NAMES))
    else:
        layout, root = find_layout(Path(spec))
        source = ({f.index: _folder_name(f) for f in class_folders(root)}
                  if layout == "imagefolder" else {})
    images, targets = load_test_data(spec, size=size)
    mapping = {}
    for index, name in source.items():
        if _key(name) in keys:
            mapping[index] = keys[_key(name)]
        elif name.isdigit() and index < len(class_names):
            mapping[index] = index
        else:
            raise InvkitError(f"test class {name!r} in {str(spec)!r} is neither one of the "
                              f"teacher's classes nor a new class "
                              f"({', '.join(class_names[:12])}{', ...' if len(class_names) > 12 else ''})")
    if mapping:
        lookup = torch.full((max(mapping) + 1,), -1, dtype=torch.int64)
        for index, target in mapping.items():
            lookup[index] = target
        targets = lookup[targets]
    bad = targets[(targets < 0) | (targets >= len(class_names))]
    if bad.numel():
        raise InvkitError(f"test data {str(spec)!r} holds class {int(bad[0])}, outside the "
                          f"extended network's {len(class_names)} classes")
    return images, targets


# --------------------------------------------------------------------------- training


def split_accuracy(network: Teacher, test: tuple[torch.Tensor, torch.Tensor],
                   old_classes: int, batch_size: int = 512) -> dict[str, float | None]:
    """Top-1 accuracy over all classes on ``test``, overall and on its old-class and
    new-class images (``None`` where the test set has none of them).

    Example:
        >>> from invkit.teachers import load_teacher
        >>> network, names = load_teacher("digits"), [str(i) for i in range(10)]
        >>> split_accuracy(network, load_extend_test("digits", names), old_classes=5)
        {'test_acc': 0.99..., 'test_acc_old': 1.0, 'test_acc_new': 0.99...}
    """
    images, targets = test
    correct = predict_logits(network, images, batch_size).argmax(1) == targets.cpu()
    old = targets.cpu() < old_classes

    def mean(mask):
        return correct[mask].float().mean().item() if mask.any() else None

    return {"test_acc": mean(torch.ones_like(old)), "test_acc_old": mean(old),
            "test_acc_new": mean(~old)}


def old_share_kd(new_logits: torch.Tensor, old_logits: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """``T^2 * KL(p_old || p_new[O])`` (batch mean): ``p_new`` is the softmax at temperature
    T over all of the new network's classes, restricted to the first ``O`` (the old
    network's). It is 0 only when ``p_new`` puts no mass on the new classes and matches
    ``p_old`` on the old ones; ``kd_loss`` on the old logits alone ignores the new ones.

    Example:
        >>> import torch
        >>> old_share_kd(torch.tensor([[0., 0., 0.]]), torch.tensor([[0., 0.]]), 1.0)  # log 1.5
        tensor(0.4055)
    """
    old = old_logits.shape[1]
    log_p_new = F.log_softmax(new_logits.float() / temperature, dim=1)[:, :old]
    log_p_old = F.log_softmax(old_logits.float() / temperature, dim=1)
    # kl_div sums p_old * (log p_old - log p_new): valid for an unnormalised p_new share.
    kl = F.kl_div(log_p_new, log_p_old, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


def align_new_rows(network: Teacher, old_classes: int, head: str | None = None) -> dict:
    """Weight Aligning (Zhao et al. 2020): scale the new classes' head rows, weights and
    biases alike, by ``gamma`` = mean L2 norm of the old rows' weights / that of the new
    rows', so both groups' weight norms have the same mean (in place). The new logits
    become ``gamma`` times what they were; the old rows are untouched. Returns
    ``{"gamma", "old_norm", "new_norm"}`` (norms before).

    Example:
        >>> import torch
        >>> from invkit.teachers import load_teacher
        >>> net = widen(load_teacher("digits"), ["A", "B"])
        >>> with torch.no_grad():
        ...     net.module.fc.weight[10:] = 2 * net.module.fc.weight[:2]
        >>> info = align_new_rows(net, old_classes=10)
        >>> norms = net.module.fc.weight.norm(dim=1)
        >>> torch.allclose(norms[10:].mean(), norms[:10].mean())
        True
    """
    from invkit.teachers.heads import find_head

    _, layer = find_head(network.module, network.meta.num_classes, head)
    if not 0 < old_classes < layer.out_features:
        raise InvkitError(f"cannot align the head: {old_classes} old classes of "
                          f"{layer.out_features}")
    with torch.no_grad():
        norms = layer.weight.norm(dim=1)
        old_norm, new_norm = norms[:old_classes].mean(), norms[old_classes:].mean()
        gamma = (old_norm / new_norm).item() if new_norm > 0 else 1.0
        layer.weight[old_classes:] *= gamma
        if layer.bias is not None:
            layer.bias[old_classes:] *= gamma
    return {"gamma": gamma, "old_norm": old_norm.item(), "new_norm": new_norm.item()}


class _Cycle:
    """Index batches over ``n`` items forever, reshuffled after each pass."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.order, self.at = torch.randperm(n, generator=generator), 0

    def next(self) -> torch.Tensor:
        parts, need = [], min(self.batch_size, self.n)
        while need:
            if self.at == self.n:
                self.order, self.at = torch.randperm(self.n, generator=self.generator), 0
            take = self.order[self.at:self.at + need]
            parts.append(take)
            self.at += take.numel()
            need -= take.numel()
        return torch.cat(parts)


EpochCallback = Callable[[dict], None]


def extend(teacher: Teacher, new: NewClasses, replay: torch.Tensor | None = None, *,
           config: ExtendConfig = ExtendConfig(),
           test: tuple[torch.Tensor, torch.Tensor] | None = None,
           progress: ProgressDisplay | None = None,
           on_epoch: EpochCallback | None = None) -> ExtendResult:
    """Train a copy of ``teacher`` with a widened head on ``new`` (and ``replay``).

    ``replay`` (uint8 or float images in [0, 1], generated from the teacher) may be None:
    LwF alone. ``test`` = (images, targets in the combined classes, see
    :func:`load_extend_test`), evaluated after every epoch. The teacher is not changed.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> from invkit.output import save_png
        >>> images, labels = digits_dataset("heldout")   # here: a few digits stand in
        >>> for i in range(8):      # for two new classes A, B and for replay images
        ...     _ = save_png(f"real/new/{'AB'[i % 2]}/{i}.png", images[i])
        ...     _ = save_png(f"generations/old/{labels[i]:03d}/{i}.png", images[i])
        >>> teacher = load_teacher("digits")                              # classes 0-9
        >>> new = load_new_classes("real/new", teacher)                   # folders A, B
        >>> replay = load_replay(["generations/old"], teacher)
        >>> from invkit.distill import DistillConfig
        >>> config = ExtendConfig(training=DistillConfig(epochs=1, batch_size=8))
        >>> result = extend(teacher, new, replay, config=config)
        >>> result.network.meta.num_classes
        12
    """
    if new.images.ndim != 4 or new.images.shape[0] == 0:
        raise InvkitError("no new-class images to train on")
    if not config.distill and replay is not None:
        raise InvkitError("plain fine-tuning (no distillation) uses no replay images: "
                          "drop them (--replay none) or keep distillation on")
    if replay is not None and replay.shape[0] == 0:
        replay = None
    train = config.training
    device = torch.device(train.device)
    generator = torch.Generator().manual_seed(train.seed)
    teacher.module.to(device).eval()
    for p in teacher.module.parameters():
        p.requires_grad_(False)
    network = widen(teacher, new.names, config.head)
    network.module.to(device)
    old = teacher.meta.num_classes
    mode = "finetune" if not config.distill else "replay" if replay is not None else "lwf"
    result = ExtendResult(network=network, config=config, old_classes=old, mode=mode)
    if test is not None:
        result.teacher_test_acc_old = _teacher_old_acc(teacher, test, old, train.eval_batch_size)

    optimizer = make_optimizer(train, _param_groups(network, config))
    n = new.images.shape[0]
    steps_per_epoch = -(-n // train.batch_size)
    lr_at = lr_plan(train, steps_per_epoch)
    padding = train.padding if train.padding is not None else network.meta.input_size // 8
    cycle = (_Cycle(replay.shape[0], config.replay_batch_size or train.batch_size, generator)
             if replay is not None else None)
    start = time.perf_counter()
    if progress is not None:
        progress.start_task(f"extend {teacher.name} by {len(new.names)} classes ({mode})",
                            steps_per_epoch * train.epochs)
    for epoch in range(1, train.epochs + 1):
        steps = shuffled_batches(n, train.batch_size, generator)
        lrs = [lr_at((epoch - 1) * steps_per_epoch + i) for i in range(len(steps))]
        record = {"epoch": epoch, "lr": lrs[-1]}
        record.update(_train_epoch(teacher, network, optimizer, new, replay, cycle, steps, lrs,
                                   padding, config, generator, progress))
        if test is not None:
            record.update(split_accuracy(network, test, old, train.eval_batch_size))
        record["seconds"] = round(time.perf_counter() - start, 2)
        result.history.append(record)
        if progress is not None:
            progress.report({k: record[k] for k in ("loss", "ce", "replay_kd", "lwf_kd")
                             if k in record}, record.get("test_acc"))
            if test is not None:
                progress.log(f"epoch {epoch}/{train.epochs}: " + _accuracy_line(record))
        if on_epoch is not None:
            on_epoch(record)
    if config.align_head:
        result.alignment = _align(network, old, config, test, result.history)
        if progress is not None and test is not None:
            progress.log(f"weight aligning (gamma {result.alignment['gamma']:.3f}): "
                         + _accuracy_line(result.final))
    result.seconds = time.perf_counter() - start
    return result


def _align(network: Teacher, old: int, config: ExtendConfig, test, history: list[dict],
           ) -> dict:
    """Weight Aligning after training; the last epoch's test accuracies become the aligned
    network's, the unaligned ones are kept in the returned record under ``"before"``."""
    info = align_new_rows(network, old, config.head)
    if test is not None and history:
        keys = ("test_acc", "test_acc_old", "test_acc_new")
        info["before"] = {k: history[-1].get(k) for k in keys}
        history[-1].update(split_accuracy(network, test, old, config.training.eval_batch_size))
    return info


def _param_groups(network: Teacher, config: ExtendConfig) -> list[dict]:
    """The head at the full rate, the rest at ``backbone_lr_scale`` x it (left out at 0)."""
    from invkit.teachers.heads import find_head

    _, head = find_head(network.module, network.meta.num_classes, config.head)
    head_ids = {id(p) for p in head.parameters()}
    rest = [p for p in network.module.parameters() if id(p) not in head_ids]
    groups = [{"params": list(head.parameters()), "lr_scale": 1.0}]
    if config.backbone_lr_scale > 0:
        groups.append({"params": rest, "lr_scale": config.backbone_lr_scale})
    else:
        for p in rest:
            p.requires_grad_(False)
    return groups


def _accuracy_line(record: dict) -> str:
    parts = [f"{label} {100 * record[k]:.1f}%" for label, k in
             (("all", "test_acc"), ("old", "test_acc_old"), ("new", "test_acc_new"))
             if record.get(k) is not None]
    return ", ".join(parts)


def _teacher_old_acc(teacher: Teacher, test, old: int, batch_size: int) -> float | None:
    images, targets = test
    mask = targets < old
    if not mask.any():
        return None
    logits = predict_logits(teacher, images[mask], batch_size)
    return (logits.argmax(1) == targets[mask].cpu()).float().mean().item()


def _train_epoch(teacher: Teacher, network: Teacher, optimizer: torch.optim.Optimizer,
                 new: NewClasses, replay: torch.Tensor | None, cycle: _Cycle | None,
                 steps: list[torch.Tensor], lrs: list[float], padding: int,
                 config: ExtendConfig, generator: torch.Generator,
                 progress: ProgressDisplay | None) -> dict:
    """One pass over the new images; returns the epoch's mean loss terms and accuracy."""
    train = config.training
    device = torch.device(train.device)
    old = teacher.meta.num_classes
    net = network.module
    # A frozen backbone keeps its BatchNorm statistics too: the network stays in eval mode.
    net.train(config.backbone_lr_scale > 0)
    sums = {k: torch.zeros((), device=device)
            for k in ("loss", "ce", "replay_kd", "lwf_kd", "replay_ce", "head_ce")}
    features: list[torch.Tensor] = []
    head_hook = None
    if config.head_ce_weight > 0:
        from invkit.teachers.heads import find_head

        _, head = find_head(net, network.meta.num_classes, config.head)
        head_hook = head.register_forward_pre_hook(lambda _, args: features.append(args[0]))
    hits = torch.zeros((), dtype=torch.int64, device=device)
    for index, lr in zip(steps, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x = augment(to_float01(new.images[index]).to(device), padding, train.flip, generator)
        b = x.shape[0]
        if cycle is not None:
            x_replay = augment(to_float01(replay[cycle.next()]).to(device), padding,
                               train.flip, generator)
            x = torch.cat([x, x_replay])  # one pass: BatchNorm sees old and new classes
        y = new.targets[index].to(device) + old
        logits = net(network.prepare(x))
        terms = {"ce": (F.cross_entropy(logits[:b], y) if config.new_ce == "all"
                        else F.cross_entropy(logits[:b, old:], y - old))}
        loss = config.ce_weight * terms["ce"]
        if config.distill:
            with torch.no_grad():
                old_logits = teacher.module(teacher.prepare(x))
            terms["lwf_kd"] = kd_loss(logits[:b, :old], old_logits[:b], train.temperature)
            loss = loss + config.lwf_weight * terms["lwf_kd"]
            if cycle is not None:
                replayed = (old_share_kd(logits[b:], old_logits[b:], train.temperature)
                            if config.replay_softmax == "all"
                            else kd_loss(logits[b:, :old], old_logits[b:], train.temperature))
                terms["replay_kd"] = replayed
                loss = loss + config.replay_weight * terms["replay_kd"]
                if config.replay_ce_weight > 0:
                    terms["replay_ce"] = F.cross_entropy(logits[b:], old_logits[b:].argmax(1))
                    loss = loss + config.replay_ce_weight * terms["replay_ce"]
            if head_hook is not None:
                # Always Be Dreaming's head-only loss: the features' gradient is stopped, so
                # only the head learns where old classes end and new ones begin.
                labels = torch.cat([y, old_logits[b:].argmax(1)])
                terms["head_ce"] = F.cross_entropy(head(features.pop().detach()), labels)
                loss = loss + config.head_ce_weight * terms["head_ce"]
        features.clear()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), train.grad_clip)
        optimizer.step()
        with torch.no_grad():
            sums["loss"] += loss.detach() * b
            for name, value in terms.items():
                sums[name] += value.detach() * b
            hits += (logits[:b].argmax(1) == y).sum()
        if progress is not None:
            progress.advance()
    net.eval()
    if head_hook is not None:
        head_hook.remove()
    n = sum(index.numel() for index in steps)
    replaying = config.distill and cycle is not None
    present = {"loss", "ce"} | ({"lwf_kd"} if config.distill else set()) | (
        {"replay_kd"} if replaying else set()) | (
        {"replay_ce"} if replaying and config.replay_ce_weight > 0 else set()) | (
        {"head_ce"} if head_hook is not None else set())  # needs distill (__post_init__)
    record = {k: v.item() / n for k, v in sums.items() if k in present}
    record["train_acc_new"] = hits.item() / n
    return record


# ----------------------------------------------------------------------------- saving


def save_extended(result: ExtendResult, out_dir: Path | str, teacher: Teacher | None = None,
                  extra: dict | None = None) -> Path:
    """Save the extended network (``extended.safetensors``, loadable as ``checkpoint:PATH``
    and extendable again) and ``extend.json`` (config, per-epoch curve, accuracies, the
    class names and indices, ``extra``) into ``out_dir``; returns the weights path.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> from invkit.output import save_png
        >>> images, labels = digits_dataset("heldout")   # here: a few digits stand in
        >>> for i in range(8):      # for two new classes A, B and for replay images
        ...     _ = save_png(f"real/new/{'AB'[i % 2]}/{i}.png", images[i])
        ...     _ = save_png(f"generations/old/{labels[i]:03d}/{i}.png", images[i])
        >>> teacher = load_teacher("digits")                              # classes 0-9
        >>> new = load_new_classes("real/new", teacher)                   # folders A, B
        >>> replay = load_replay(["generations/old"], teacher)
        >>> from invkit.distill import DistillConfig
        >>> config = ExtendConfig(training=DistillConfig(epochs=1, batch_size=8))
        >>> result = extend(teacher, new, replay, config=config)
        >>> path = save_extended(result, "runs/digits12", teacher)
        >>> load_teacher(f"checkpoint:{path}").meta.class_names
        ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'A', 'B')
    """
    from invkit.teachers import save_teacher

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WEIGHTS_FILE
    meta_extra = {"extended_from": teacher.name if teacher is not None else "",
                  "old_classes": str(result.old_classes), "extend_mode": result.mode}
    final = result.final
    for key in ("test_acc", "test_acc_old", "test_acc_new"):
        if final.get(key) is not None:
            meta_extra[key] = f"{final[key]:.4f}"
    save_teacher(result.network, path, extra=meta_extra)
    record = {**result.summary(), "weights": str(path)}
    if teacher is not None:
        record["teacher"] = teacher.name
    record.update(extra or {})
    write_json(out_dir / REPORT_FILE, record)
    return path


__all__ = [
    "ExtendConfig", "NewClasses", "ExtendResult", "class_names_of", "combined_names",
    "old_share_kd", "align_new_rows",
    "widen", "load_new_classes", "load_replay", "load_extend_test", "split_accuracy",
    "extend", "save_extended", "WEIGHTS_FILE", "REPORT_FILE",
]
