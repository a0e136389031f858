"""Data-free knowledge distillation: train a student on generated images to match a teacher.

The loss is Hinton's knowledge-distillation loss, ``T^2 * KL(softmax(t/T) || softmax(s/T))``
(batch mean), on augmented copies of the images that both networks see (random crop
after padding, optional horizontal flip). The learning rate warms up linearly, then
follows a cosine decay to 0; the gradient norm is clipped; SGD with momentum or Adam.
The student is evaluated on real test images after every epoch.

Example:
    >>> from invkit.teachers import load_teacher
    >>> from invkit.teachers.digits import digits_dataset
    >>> from invkit.data import load_test_data
    >>> teacher = load_teacher("digits")
    >>> student = load_teacher("digits-verifier", weights="none")
    >>> images, targets = digits_dataset("train")      # stand-ins for generated images
    >>> test_images, test_targets = load_test_data("digits")
    >>> result = distill(teacher, student, images[:64], targets[:64],
    ...                  test=(test_images[:100], test_targets[:100]),
    ...                  config=DistillConfig(epochs=1, flip=False))
    >>> sorted(result.history[-1])
    ['epoch', 'loss', 'lr', 'seconds', 'test_acc', 'train_acc', 'train_agree']

Data too large for memory streams from disk instead: pass a dataset
(``GeneratedImages``) in place of the tensors; the result is the same.

    >>> from invkit.data import GeneratedImages
    >>> from invkit.output import class_dirname, save_png
    >>> for n in range(32):                       # a small ImageFolder to stream from
    ...     _ = save_png(f"generations/digits/{class_dirname(int(targets[n]), 10, None)}"
    ...                  f"/{n:03d}.png", images[n])
    >>> result = distill(teacher, student, GeneratedImages("generations/digits"),
    ...                  config=DistillConfig(epochs=1, flip=False, num_workers=0))
    >>> [h["epoch"] for h in result.history]
    [1]
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F

from invkit.data import to_float01
from invkit.errors import InvkitError
from invkit.evaluate import predict_dataset, predict_logits
from invkit.output import write_json
from invkit.progress import ProgressDisplay
from invkit.schedules import warmup_cosine
from invkit.specs import Teacher
from invkit.validate import finite_float

OPTIMIZERS = ("sgd", "adam")

#: Training or test data: a dataset of ``(image, target)`` items (e.g.
#: :class:`invkit.data.GeneratedImages`), or for test data an ``(images, targets)`` pair.
TestData = Union[tuple[torch.Tensor, torch.Tensor], torch.utils.data.Dataset]


@dataclass(frozen=True)
class DistillConfig:
    """Training settings of :func:`distill`.

    ``padding=None`` pads by 1/8 of the student's input size before the random crop
    (4 px at 32 px). ``flip`` should be off for data that is not mirror-invariant
    (digits). ``lr`` is the peak rate, reached by a linear warm-up over
    ``warmup_epochs`` and decayed by a cosine to 0. ``grad_clip`` caps the gradient
    norm: a confident teacher's T^2-scaled targets can otherwise blow up a student
    without BatchNorm at SGD rates (measured: NaN by epoch 5 at lr 0.05 on real digits).

    Example:
        >>> DistillConfig(epochs=5, optimizer="adam", lr=1e-3, flip=False).padding is None
        True
        >>> DistillConfig(optimizer="lion")
        Traceback (most recent call last):
        invkit.errors.InvkitError: optimizer 'lion' is not one of: ...
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 4.0
    warmup_epochs: int = 1
    grad_clip: float | None = 5.0
    padding: int | None = None
    flip: bool = True
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 512
    num_workers: int = 0  # DataLoader worker processes when reading a dataset (0: this one)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise InvkitError(f"optimizer {self.optimizer!r} is not one of: "
                              f"{', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise InvkitError(f"{name}={getattr(self, name)} must be at least 1")
        # Finite numbers only (invkit.validate): NaN/inf train a NaN student "successfully".
        for name in ("lr", "temperature"):
            finite_float(getattr(self, name), name, positive=True)
        finite_float(self.momentum, "momentum", minimum=0, maximum=1)
        finite_float(self.weight_decay, "weight_decay", minimum=0)
        if self.grad_clip is not None:
            finite_float(self.grad_clip, "grad_clip", positive=True)
        if self.warmup_epochs < 0:
            raise InvkitError(f"warmup_epochs={self.warmup_epochs} must be 0 or more")
        if self.padding is not None and self.padding < 0:
            raise InvkitError(f"padding={self.padding} must be 0 or more")
        if self.num_workers < 0:
            raise InvkitError(f"num_workers={self.num_workers} must be 0 or more")


@dataclass
class DistillResult:
    """What :func:`distill` returns: the trained student and its learning curve."""

    student: Teacher
    config: DistillConfig
    history: list[dict] = field(default_factory=list)
    teacher_test_acc: float | None = None
    seconds: float = 0.0

    @property
    def final_test_acc(self) -> float | None:
        return self.history[-1].get("test_acc") if self.history else None

    def summary(self) -> dict:
        """A JSON-ready record (what ``distill.json`` holds, less the caller's extras)."""
        return {
            "student": self.student.name,
            "student_arch": self.student.meta.arch,
            "config": dataclasses.asdict(self.config),
            "teacher_test_acc": self.teacher_test_acc,
            "final_test_acc": self.final_test_acc,
            "best_test_acc": max((h["test_acc"] for h in self.history if "test_acc" in h),
                                 default=None),
            "seconds": round(self.seconds, 2),
            "epochs": self.history,
        }


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """``T^2 * KL(p_teacher || p_student)`` with both softmaxes at temperature ``T`` (batch mean).

    The ``T^2`` keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015).

    Example:
        >>> kd_loss(torch.zeros(2, 10), torch.zeros(2, 10), 4.0)
        tensor(0.)
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


def augment(images01: torch.Tensor, padding: int, flip: bool,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (after replicate-padding by ``padding``) and optional horizontal flip.

    Replicate padding (not zeros) so the shifted-in border matches the background
    whatever its colour. One crop offset and one flip decision per image.

    Example:
        >>> augment(torch.rand(8, 3, 32, 32), padding=4, flip=True).shape
        torch.Size([8, 3, 32, 32])
    """
    n, _, h, w = images01.shape
    out = images01
    if padding > 0:
        padded = F.pad(images01, (padding,) * 4, mode="replicate")
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images01.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images01.device)
        rows = dy[:, None] + torch.arange(h, device=images01.device)  # (N, H)
        cols = dx[:, None] + torch.arange(w, device=images01.device)  # (N, W)
        batch = torch.arange(n, device=images01.device)[:, None, None]
        # Advanced indices around a slice: the result is (N, H, W, C).
        out = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(images01.device)
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out.contiguous()


def accuracy_on(network: Teacher, test: TestData, batch_size: int = 512,
                num_workers: int = 0) -> float:
    """Top-1 accuracy of ``network`` on ``test``: (images, targets), or a dataset."""
    if isinstance(test, torch.utils.data.Dataset):
        logits, targets = predict_dataset(network, test, batch_size, num_workers)
    else:
        images, targets = test
        logits = predict_logits(network, images, batch_size)
    return (logits.argmax(1) == targets.cpu()).float().mean().item()


def make_optimizer(config: DistillConfig, params) -> torch.optim.Optimizer:
    """The optimiser ``config`` names (SGD with Nesterov momentum, or Adam) over ``params``.

    Example:
        >>> net = torch.nn.Linear(4, 2)
        >>> type(make_optimizer(DistillConfig(optimizer="adam", lr=1e-3), net.parameters()))
        <class 'torch.optim.adam.Adam'>
    """
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.momentum > 0)


def lr_plan(config: DistillConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate at each global step: linear warm-up over ``warmup_epochs``, then
    a cosine decay to 0 over ``config.epochs`` epochs of ``steps_per_epoch`` steps.

    Example:
        >>> lr_at = lr_plan(DistillConfig(epochs=2, lr=0.1, warmup_epochs=1), 10)
        >>> round(lr_at(0), 6), lr_at(9)
        (0.01, 0.1)
    """
    total = steps_per_epoch * config.epochs
    schedule = warmup_cosine(warmup=min(config.warmup_epochs * steps_per_epoch, total - 1))
    return lambda step: config.lr * schedule(step, total)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's index batches: a fresh permutation of ``range(n)`` cut into batches.

    Example:
        >>> [b.tolist() for b in shuffled_batches(5, 2, torch.Generator().manual_seed(0))]
        [[4, 0], [1, 3], [2]]
    """
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _check_pair(teacher: Teacher, student: Teacher) -> None:
    if teacher.meta.num_classes != student.meta.num_classes:
        raise InvkitError(f"student {student.name!r} has {student.meta.num_classes} classes but "
                          f"teacher {teacher.name!r} has {teacher.meta.num_classes}; "
                          "pick a student built for the teacher's classes")


EpochCallback = Callable[[dict], None]


def distill(teacher: Teacher, student: Teacher,
            images: torch.Tensor | torch.utils.data.Dataset,
            targets: torch.Tensor | None = None, *, config: DistillConfig = DistillConfig(),
            test: TestData | None = None,
            progress: ProgressDisplay | None = None,
            on_epoch: EpochCallback | None = None) -> DistillResult:
    """Train ``student`` (in place) to match ``teacher`` on ``images`` (uint8 or float in [0, 1]).

    ``images`` is a tensor (N, 3, H, W), or a dataset of ``(image, target)`` items
    (e.g. :class:`invkit.data.GeneratedImages`) read batch by batch through a
    ``DataLoader`` with ``config.num_workers`` workers; both give the same result for
    the same images. ``targets`` (the classes the images were generated for; a
    dataset brings its own) are used only to report training accuracy; the loss reads
    the teacher's outputs alone. ``test`` = (images, targets) of real data, or a
    dataset, evaluated after every epoch. ``on_epoch`` gets each epoch's record
    (``epoch``, ``lr``, ``loss``, ``train_agree``, ``train_acc``, ``test_acc``).

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> teacher = load_teacher("digits")
        >>> student = load_teacher("digits-verifier", weights="none")
        >>> images, targets = digits_dataset("train")
        >>> result = distill(teacher, student, images[:64], targets[:64],
        ...                  config=DistillConfig(epochs=2, flip=False))
        >>> [h["epoch"] for h in result.history], result.student is student
        ([1, 2], True)
    """
    _check_pair(teacher, student)
    streamed = isinstance(images, torch.utils.data.Dataset)
    if streamed and len(images) == 0:
        raise InvkitError("no training images (the dataset is empty)")
    if not streamed and (images.ndim != 4 or images.shape[0] == 0):
        raise InvkitError(f"no training images (got a tensor of shape {tuple(images.shape)})")
    device = torch.device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    teacher.module.to(device).eval()
    for p in teacher.module.parameters():
        p.requires_grad_(False)  # no weight gradients for the teacher, ever
    student.module.to(device)
    params = [p for p in student.module.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params)
    padding = config.padding if config.padding is not None else student.meta.input_size // 8
    n = len(images) if streamed else images.shape[0]
    source = _DatasetBatches(images, config) if streamed else _TensorBatches(images, targets)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    lr_at = lr_plan(config, steps_per_epoch)
    result = DistillResult(student=student, config=config)
    if test is not None:
        result.teacher_test_acc = accuracy_on(teacher, test, config.eval_batch_size,
                                              config.num_workers)

    start = time.perf_counter()
    if progress is not None:
        progress.start_task(f"distill {teacher.name} -> {student.name}", total)
    for epoch in range(1, config.epochs + 1):
        steps = shuffled_batches(n, config.batch_size, generator)
        first_step = (epoch - 1) * steps_per_epoch
        lrs = [lr_at(first_step + i) for i in range(len(steps))]
        record = {"epoch": epoch, "lr": lrs[-1]}
        record.update(_train_epoch(teacher, student, optimizer, source.epoch(steps), lrs,
                                   padding, config, generator, progress))
        if test is not None:
            record["test_acc"] = accuracy_on(student, test, config.eval_batch_size,
                                             config.num_workers)
        record["seconds"] = round(time.perf_counter() - start, 2)
        result.history.append(record)
        if progress is not None:
            progress.report({"epoch": epoch, "loss": record["loss"],
                             "train_agree": record["train_agree"]}, record.get("test_acc"))
        if on_epoch is not None:
            on_epoch(record)
    result.seconds = time.perf_counter() - start
    return result


class _TensorBatches:
    """Batches of in-memory images: ``images[index]`` for each index batch."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | None):
        self.images, self.targets = images, targets

    def epoch(self, steps: Sequence[torch.Tensor]) -> Iterator[tuple]:
        for index in steps:
            yield self.images[index], None if self.targets is None else self.targets[index]


class _EpochSampler(torch.utils.data.Sampler):
    """A batch sampler whose index batches are set before each epoch.

    One ``DataLoader`` (and, with workers, one set of persistent worker processes)
    serves every epoch; the shuffled order still comes from the trainer's generator,
    so a dataset gives exactly the batches a tensor would.
    """

    def __init__(self):
        self.steps: list[list[int]] = []

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


class _DatasetBatches:
    """Batches read from a dataset through a DataLoader (decoded in worker processes)."""

    def __init__(self, dataset: torch.utils.data.Dataset, config: DistillConfig):
        self.sampler = _EpochSampler()
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
            pin_memory=torch.device(config.device).type == "cuda")

    def epoch(self, steps: Sequence[torch.Tensor]) -> Iterator[tuple]:
        self.sampler.steps = [index.tolist() for index in steps]
        for images, targets in self.loader:
            yield images, torch.as_tensor(targets)


def _train_epoch(teacher: Teacher, student: Teacher, optimizer: torch.optim.Optimizer,
                 batches: Iterator[tuple], lrs: list[float], padding: int,
                 config: DistillConfig, generator: torch.Generator,
                 progress: ProgressDisplay | None) -> dict:
    """One pass over ``batches`` ((images, targets or None) per step, one lr each);
    returns the epoch's mean loss and accuracies."""
    device = torch.device(config.device)
    net = student.module
    net.train()
    # Sums stay on the device: one sync per epoch, not per step.
    loss_sum = torch.zeros((), device=device)
    agree = torch.zeros((), dtype=torch.int64, device=device)
    hits = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    has_targets = False
    for (batch_images, batch_targets), lr in zip(batches, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        x01 = augment(to_float01(batch_images).to(device), padding, config.flip, generator)
        with torch.no_grad():
            teacher_logits = teacher.module(teacher.prepare(x01))
        student_logits = net(student.prepare(x01))
        loss = kd_loss(student_logits, teacher_logits, config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            pred = student_logits.argmax(1)
            loss_sum += loss.detach() * x01.shape[0]
            agree += (pred == teacher_logits.argmax(1)).sum()
            if batch_targets is not None:
                has_targets = True
                hits += (pred == batch_targets.to(device)).sum()
        n += x01.shape[0]
        if progress is not None:
            progress.advance()
    net.eval()
    record = {"loss": loss_sum.item() / n, "train_agree": agree.item() / n}
    if has_targets:
        record["train_acc"] = hits.item() / n
    return record


def save_distilled(result: DistillResult, out_dir: Path | str, teacher: Teacher | None = None,
                   extra: dict | None = None) -> Path:
    """Save the student (``student.safetensors``, loadable as ``checkpoint:PATH``) and
    ``distill.json`` (config, per-epoch curve, ``extra``) into ``out_dir``; returns the
    weights path.

    The student inherits the teacher's class names when it has none, so the saved file
    can serve as a verifier or teacher later with readable classes.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> teacher = load_teacher("digits")
        >>> student = load_teacher("digits-verifier", weights="none")
        >>> images, targets = digits_dataset("train")
        >>> result = distill(teacher, student, images[:32], targets[:32],
        ...                  config=DistillConfig(epochs=1, flip=False))
        >>> path = save_distilled(result, "runs/student", teacher)
        >>> path
        PosixPath('runs/student/student.safetensors')
        >>> load_teacher(f"checkpoint:{path}").meta.arch
        'digits-verifier'
    """
    from invkit.teachers import save_teacher

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "student.safetensors"
    student = result.student
    if teacher is not None and student.meta.class_names is None and teacher.meta.class_names:
        student = dataclasses.replace(
            student, meta=dataclasses.replace(student.meta, class_names=teacher.meta.class_names))
        result.student = student
    save_teacher(student, path)
    record = {**result.summary(), "weights": str(path)}
    if teacher is not None:
        record["teacher"] = teacher.name
    record.update(extra or {})
    write_json(out_dir / "distill.json", record)
    return path


__all__ = ["DistillConfig", "DistillResult", "kd_loss", "augment", "accuracy_on",
           "make_optimizer", "lr_plan", "shuffled_batches", "distill", "save_distilled"]
