"""The ``fast`` method: train a conditional generator once, then sample every batch.

Fast-Datafree (Fang et al., AAAI 2022) in invkit's terms. A generator G(z, y) (see
:mod:`invkit_plugins.generative.network`) is trained against the frozen teacher with the
run's objective: each step draws latents and labels, the teacher sees the generated view
(``Step(inputs=view, logits=teacher(view), targets=labels, teacher)``, so ``bn-stats``,
``tv-*``, ``adi`` work as in DeepInversion) and the objective's gradient flows into G.

Two recipes (``steps_per_batch`` = K):

- K = 0, plain: ``train_steps`` steps of Adam on G; each batch is then one forward pass.
- K > 0, Fast-K: ``warmup_steps`` plain steps, then Reptile meta-learning for the rest:
  each outer step copies the shared weights, adapts them with K fresh-Adam steps on a new
  batch, and moves the shared weights a fraction ``meta_lr`` towards the adapted ones.
  Each batch is then made by the same K-step adaptation from the learned start, on that
  batch's own latents and labels.

Diversity: with ``diversity`` > 0 a mode-seeking term (Mao et al., CVPR 2019) is added:
for every pair of images of the same class in a batch, the ratio of their latent distance
to their image distance, averaged; it is large when different latents give alike images.

Determinism: G is trained lazily on the first ``generate`` call from ``generator_seed``
alone (CPU-seeded latents, labels and initial weights), so every torchrun rank and a
resumed run train the same G; a batch's latents come from the batch seed. Images are a
function of (G's weights, batch seed, targets). ``--generator PATH`` skips training.

Example:
    >>> from invkit import load_teacher
    >>> from invkit_plugins.generative import FastConfig, default_objective
    >>> teacher = load_teacher("digits")
    >>> fast = FastGenerator(teacher, default_objective(),
    ...                      config=FastConfig(train_steps=3, train_bs=4, warmup_steps=1))
    >>> result = fast.generate([0, 1, 2, 3], seed=7)   # trains G first, then samples
    >>> result.images01.shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from invkit import (
    Checkpoint, Generation, InvkitError, Objective, Setup, Step, Teacher, as_verifier, autocast,
    finish, frozen, module_device, verifier_predictions,
)
from invkit_plugins.generative.network import (
    ConditionalGenerator, GeneratorSpec, latents, load_generator, save_generator,
)
from invkit_plugins.generative.options import FastConfig

BETAS = (0.5, 0.999)  # the usual generator Adam betas


class FastGenerator:
    """The ``fast`` method's generator (its factory, called by core with the config).

    ``net`` is the trained generator (None until the first :meth:`generate` or
    :meth:`train`); :meth:`save` writes it as safetensors.
    """

    def __init__(self, teacher: Teacher, objective: Objective | None = None, *,
                 config: FastConfig | None = None, student: Teacher | None = None,
                 verifier=None):
        from invkit_plugins.generative import default_objective

        self.teacher = teacher
        self.objective = objective if objective is not None else default_objective()
        self.config = config or FastConfig(grayscale=teacher.meta.grayscale)
        self.student = student
        self.verifier = as_verifier(verifier)
        self.device = module_device(teacher.module)
        self.net: ConditionalGenerator | None = None
        self.train_seconds = 0.0
        if self.config.generator:
            self.net = load_generator(self.config.generator).to(self.device)

    # -- public -----------------------------------------------------------------------
    @property
    def spec(self) -> GeneratorSpec:
        cfg, meta = self.config, self.teacher.meta
        return GeneratorSpec(z_dim=cfg.z_dim, width=cfg.width, size=meta.input_size,
                             channels=1 if cfg.grayscale else len(meta.mean),
                             num_classes=meta.num_classes)

    def train(self, callback: Callable[[Checkpoint], None] | None = None) -> ConditionalGenerator:
        """Train G (once; later calls return it) and save it if ``save_generator`` is set."""
        if self.net is not None:
            return self.net
        started = time.perf_counter()
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.generator_seed)
            net = ConditionalGenerator(self.spec)
        net = net.to(self.device).train()
        draw = torch.Generator().manual_seed(cfg.generator_seed)
        rng = random.Random(cfg.generator_seed)
        counter = _Counter(callback, self._total_steps(first=True), stages=2, stage=1,
                           label="train generator", every=cfg.save_every,
                           stage_iterations=self.training_steps())
        k = cfg.steps_per_batch
        plain = cfg.train_steps if not k else cfg.warmup_steps
        with self._attached():
            optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=BETAS)
            for _ in range(plain):
                z, y = self._training_batch(draw)
                self._step(net, optimizer, z, y, rng, counter)
            for _ in range((cfg.train_steps - plain) // k if k else 0):
                z, y = self._training_batch(draw)
                self._reptile(net, z, y, rng, counter)
        self.net = net
        self.train_seconds = time.perf_counter() - started
        if cfg.save_generator and _is_main_process():
            self.save(cfg.save_generator)
        return net

    def generate(self, targets: Sequence[int] | torch.Tensor, seed: int = 0,
                 callback: Callable[[Checkpoint], None] | None = None) -> Generation:
        """One batch for ``targets``: trains G first if needed, then K steps or one pass."""
        cfg = self.config
        targets = self._targets(targets)
        first = self.net is None
        started = time.perf_counter()
        self.train(callback)
        trained = time.perf_counter() - started
        z = latents(targets.numel(), cfg.z_dim, seed).to(self.device)
        stages = 2 if first else 1
        k = cfg.steps_per_batch
        counter = _Counter(callback, self._total_steps(first), stages=stages, stage=stages,
                           label=f"fine-tune {k} steps" if k else "sample",
                           every=cfg.save_every, stage_iterations=max(k, 1),
                           done=self.training_steps() if first else 0)
        started = time.perf_counter()
        with self._attached():
            net = self.net
            if k:
                net = copy.deepcopy(self.net).train()
                optimizer = torch.optim.Adam(net.parameters(), lr=cfg.inner_lr, betas=BETAS)
                rng = random.Random(int(seed))
                for _ in range(k):
                    self._step(net, optimizer, z, targets, rng, counter)
            inputs, losses = self._sample(net, z, targets)
            if not k:
                counter.tick(losses, inputs)
        timings = ([trained] if first else []) + [time.perf_counter() - started]
        return finish(self.teacher, inputs, targets, losses, verifier=self.verifier,
                      timings=timings, iterations=max(k, 1), precision=cfg.amp)

    def save(self, path) -> None:
        """Write the trained generator (safetensors + metadata: shape, teacher, recipe)."""
        if self.net is None:
            raise InvkitError("the generator is not trained yet: call train() or generate()")
        cfg = self.config
        save_generator(self.net, path, teacher=self.teacher.name, extra={
            "train_steps": cfg.train_steps, "steps_per_batch": cfg.steps_per_batch,
            "generator_seed": cfg.generator_seed, "objective": self.objective.describe(),
            "train_seconds": round(self.train_seconds, 3)})

    def save_artifacts(self, out_dir) -> None:
        """Core calls this on rank 0 after the dataset is written: ``generator.safetensors``
        beside the images (nothing when no batch needed the generator this session)."""
        if self.net is not None:
            self.save(Path(out_dir) / "generator.safetensors")

    # -- the loop's parts -------------------------------------------------------------
    def _attached(self):
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(frozen(self.teacher.module))
        stack.enter_context(frozen(self.student.module if self.student else None))
        stack.enter_context(self.objective.attached(Setup(teacher=self.teacher,
                                                          student=self.student)))
        return stack

    def training_steps(self) -> int:
        """Gradient steps of G's training: warm-up plus whole Reptile outer steps."""
        cfg, k = self.config, self.config.steps_per_batch
        if cfg.generator:
            return 0
        if not k:
            return cfg.train_steps
        return cfg.warmup_steps + (cfg.train_steps - cfg.warmup_steps) // k * k

    def _total_steps(self, first: bool) -> int:
        return (self.training_steps() if first else 0) + max(self.config.steps_per_batch, 1)

    def _training_batch(self, draw: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        z = torch.randn(cfg.train_bs, cfg.z_dim, generator=draw)
        y = torch.randint(self.teacher.meta.num_classes, (cfg.train_bs,), generator=draw)
        return z.to(self.device), y.to(self.device)

    def _inputs(self, images01: torch.Tensor) -> torch.Tensor:
        """Generator output (one grey or all channels) as the teacher's normalised input."""
        channels = len(self.teacher.meta.mean)
        if images01.shape[1] != channels:
            images01 = images01.expand(-1, channels, -1, -1)
        return self.teacher.normalize(images01)

    def _loss(self, net, z, y, rng: random.Random):
        cfg = self.config
        images01 = net(z, y)
        view = _augment(self._inputs(images01), cfg.jitter, cfg.flip, rng)
        with autocast(self.device, cfg.amp):
            logits = self.teacher.module(view)
            step = Step(inputs=view, logits=logits, targets=y, teacher=self.teacher)
            total, terms = self.objective(step)
        total = total.float()
        if cfg.diversity > 0:
            terms = dict(terms)
            terms["mode-seeking"] = mode_seeking(images01, z, y)
            total = total + cfg.diversity * terms["mode-seeking"]
        return total, terms, images01

    def _step(self, net, optimizer, z, y, rng, counter: _Counter) -> None:
        total, terms, images01 = self._loss(net, z, y, rng)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        counter.tick_lazy(total, terms, lambda: self._inputs(images01.detach()))

    def _reptile(self, net, z, y, rng, counter: _Counter) -> None:
        """One Reptile outer step: K fresh-Adam steps on (z, y), then move towards them."""
        cfg = self.config
        start = [p.detach().clone() for p in net.parameters()]
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.inner_lr, betas=BETAS)
        for _ in range(cfg.steps_per_batch):
            self._step(net, optimizer, z, y, rng, counter)
        with torch.no_grad():
            for p, p0 in zip(net.parameters(), start):
                p.copy_(p0 + cfg.meta_lr * (p - p0))

    @torch.no_grad()
    def _sample(self, net, z, targets) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's images with G's BatchNorm on running statistics (no batch coupling),
        and the objective's terms on them (one more teacher pass)."""
        was_training = net.training
        net.eval()
        try:
            inputs = self._inputs(net(z, targets))
        finally:
            net.train(was_training)
        with autocast(self.device, self.config.amp):
            logits = self.teacher.module(inputs)
            total, terms = self.objective(Step(inputs=inputs, logits=logits, targets=targets,
                                               teacher=self.teacher))
        return inputs, _floats(total, terms)

    def _targets(self, targets) -> torch.Tensor:
        targets = torch.as_tensor(list(targets) if not torch.is_tensor(targets) else targets,
                                  dtype=torch.long)
        if targets.ndim != 1 or targets.numel() == 0:
            raise InvkitError("targets must be a non-empty list of class indices")
        n = self.teacher.meta.num_classes
        if int(targets.min()) < 0 or int(targets.max()) >= n:
            raise InvkitError(f"target {int(targets.max())} is out of range for a {n}-class "
                              f"teacher (valid: 0..{n - 1})")
        return targets.to(self.device)


def mode_seeking(images: torch.Tensor, z: torch.Tensor, y: torch.Tensor,
                 eps: float = 1e-5) -> torch.Tensor:
    """Mean over same-class pairs of (latent distance / image distance), both mean
    absolute differences; 0 when no class appears twice.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> value = mode_seeking(torch.rand(4, 1, 8, 8, generator=g),
        ...                      torch.randn(4, 16, generator=g), torch.tensor([0, 0, 1, 1]))
        >>> value.shape, bool(value > 0)
        (torch.Size([]), True)
        >>> float(mode_seeking(torch.rand(2, 1, 8, 8), torch.randn(2, 16), torch.tensor([0, 1])))
        0.0
    """
    n = images.shape[0]
    same = (y[:, None] == y[None, :]) & torch.ones(n, n, dtype=torch.bool,
                                                   device=y.device).triu(1)
    if not bool(same.any()):
        return images.new_zeros(())
    flat = images.flatten(1)
    dx = torch.cdist(flat, flat, p=1)[same] / flat.shape[1]
    dz = torch.cdist(z, z, p=1)[same] / z.shape[1]
    return (dz / (dx + eps)).mean()


@torch.no_grad()
def feature_diversity(teacher: Teacher, images01: torch.Tensor, targets: torch.Tensor,
                      batch_size: int = 250) -> float:
    """Mean pairwise Euclidean distance of the teacher's penultimate features (the input
    of its last linear layer) between images of the same class, averaged over classes.
    ``images01``: float in [0, 1] or uint8 (as :func:`invkit.data.load_image_dataset`).

    A collapsed generator scores near 0; use it to compare methods on one teacher.

    Example:
        >>> from invkit import load_teacher
        >>> teacher = load_teacher("digits")
        >>> same = torch.full((4, 3, 32, 32), 0.5)          # four identical images
        >>> feature_diversity(teacher, same, torch.tensor([0, 0, 1, 1]))
        0.0
    """
    linear = [m for m in teacher.module.modules() if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise InvkitError(f"teacher {teacher.name!r} has no linear layer to read features at")
    captured: list[torch.Tensor] = []
    handle = linear[-1].register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].flatten(1).float().cpu()))
    device = module_device(teacher.module)
    scale = 255.0 if images01.dtype == torch.uint8 else 1.0  # images as loaded from disk
    try:
        for i in range(0, images01.shape[0], batch_size):
            chunk = images01[i:i + batch_size].float().to(device) / scale
            teacher.module(teacher.prepare(chunk))
    finally:
        handle.remove()
    features = torch.cat(captured)
    targets = torch.as_tensor(targets).cpu()
    per_class = []
    for c in targets.unique():
        f = features[targets == c]
        if f.shape[0] > 1:
            d = torch.cdist(f, f)
            per_class.append(float(d.sum() / (f.shape[0] * (f.shape[0] - 1))))
    return sum(per_class) / len(per_class) if per_class else 0.0


class _Counter:
    """Calls the callback once per step; every ``every`` steps and at the end with losses
    and the current images (reading values back from the device only then)."""

    def __init__(self, callback, total: int, *, stages: int, stage: int, label: str,
                 every: int, stage_iterations: int, done: int = 0):
        self.callback, self.total, self.stages, self.stage = callback, total, stages, stage
        self.label, self.every, self.stage_iterations = label, every, stage_iterations
        self.done, self.stage_done = done, 0

    def tick_lazy(self, total, terms, inputs: Callable[[], torch.Tensor]) -> None:
        if self.callback is None:
            return
        due = (self.done + 1) % self.every == 0 or self.stage_done + 1 == self.stage_iterations
        self.tick(_floats(total, terms) if due else None, inputs() if due else None)

    def tick(self, losses, inputs) -> None:
        self.done += 1
        self.stage_done += 1
        if self.callback is not None:
            self.callback(Checkpoint(
                stage=self.stage, stages=self.stages, iteration=self.done,
                total_iterations=self.total, stage_iteration=self.stage_done,
                stage_iterations=self.stage_iterations, losses=losses, inputs=inputs,
                description=self.label))


def _augment(x: torch.Tensor, jitter: int, flip: bool, rng: random.Random) -> torch.Tensor:
    """The teacher's view: a random shift (roll) and flip drawn from a host-side RNG."""
    if jitter > 0:
        dx, dy = rng.randint(-jitter, jitter), rng.randint(-jitter, jitter)
        if dx or dy:
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
    if flip and rng.random() < 0.5:
        x = torch.flip(x, dims=(3,))
    return x


def _floats(total: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    values = torch.stack([t.detach().float() for t in terms.values()]
                         + [total.detach().float()]).cpu().tolist()
    out = dict(zip(terms, values[:-1]))
    out["total"] = values[-1]
    return out


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
