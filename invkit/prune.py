"""Data-free structural pruning: remove whole channels of a teacher using generated images.

The recipe of the DeepInversion paper: rank channels by a label-free first-order Taylor
estimate of how much removing them changes the network's output distribution (the KL
divergence to the unpruned teacher), remove the least important ones in a few steps,
and fine-tune the pruned network by knowledge distillation from the teacher on the
generated images (:func:`invkit.distill.distill`, the trainer of ``invkit distill``).

Channels are removed structurally with torch-pruning's dependency graph (the optional
``invkit[prune]`` extra), which keeps coupled channels consistent: the channels of a
residual sum, of a concatenation, and the matching inputs of the next layers go
together (one *group*). The classifier's outputs are never pruned.

**The Taylor-KL importance and its pitfall.** For a channel ``c`` with activation
``a_c`` (after its BatchNorm when it has one, else the conv/linear output), the first
order change of a loss ``L`` when the channel is removed is ``-sum_{h,w} dL/da_c * a_c``
(Molchanov et al. 2019). With ``L = KL(teacher || pruned)`` this vanishes while the
pruned network still equals the teacher: KL sits at its minimum, so its gradient is 0.
invkit therefore uses the *sampled* form of the same KL: since ``KL(p_t || p_s) =
E_{y ~ p_t}[-log p_s(y)] + const``, the gradient of ``-log p_s(y)`` for a class ``y``
drawn from the teacher's (temperature-``T``) softmax is an unbiased sample of the KL's
gradient, and the per-image squared Taylor term of it,
``E_x E_y[(sum_{h,w} d(-log p_s(y|x))/da_c * a_c)^2]``, equals the squared first-order
Taylor term of the KL plus the Fisher information term ``a_c^T F a_c``, which is twice
the second-order Taylor term of the KL at the point where the two networks agree (the
Hessian of the KL there is the Fisher information). So the estimate is the paper's
first-order KL Taylor criterion where it is informative (after a pruning step, when the
networks differ) and the KL's own next-order term where the first order vanishes (the
first step); it needs no labels and one backward pass per batch (eval-mode BatchNorm
keeps images independent, so per-image terms come from one batch gradient). The terms
of coupled layers add up per image before squaring (removing a residual channel removes
all its contributions at once). Scores are in the same unit (change of KL) in every
layer.

``magnitude`` is the baseline: the L2 norm of each group's weights (torch-pruning's
``GroupMagnitudeImportance``), no data needed.

The allocation is uniform: every prunable group keeps the same fraction of its original
channels, found by bisection so the network's MACs reach ``target_macs`` (or the
fraction of channels ``amount`` is removed), in ``steps`` equal steps of MACs; the
importance picks *which* channels go in each group. Between steps the network is
fine-tuned for ``step_epochs`` epochs by distillation and the importance re-estimated.

The pruned network is saved as safetensors with its pruned shapes in the metadata
(:func:`pruned_structure`), so ``checkpoint:PATH`` rebuilds it without unpickling.

Example:
    >>> from invkit.teachers import load_teacher
    >>> from invkit.teachers.digits import digits_dataset
    >>> teacher = load_teacher("digits")
    >>> images, targets = digits_dataset("heldout")     # here: real images, a few of them
    >>> images, targets = images[:32], targets[:32]
    >>> result = prune(teacher, images, targets, test=(images, targets),
    ...                config=PruneConfig(target_macs=0.5, steps=1, finetune_epochs=1))
    >>> result.macs_after <= 0.5 * result.macs_before
    True
    >>> sorted(result.accuracy)
    ['before', 'finetuned', 'pruned']
    >>> path = save_pruned(result, "pruned/digits-50")   # then --teacher checkpoint:PATH
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from invkit.data import to_float01
from invkit.distill import DistillConfig, accuracy_on, distill
from invkit.errors import InvkitError
from invkit.output import write_json
from invkit.progress import ProgressDisplay
from invkit.specs import Teacher
from invkit.teachers.checkpoint import PRUNED_KEY, changed_layers

IMPORTANCES = ("taylor-kl", "magnitude")
WEIGHTS_FILE = "pruned.safetensors"
RECORD_FILE = "prune.json"
EXTRA = "pip install 'invkit[prune]'"


def require_torch_pruning():
    """The ``torch_pruning`` module, or a one-line error naming the extra that installs it.

    Example:
        >>> tp = require_torch_pruning()
    """
    try:
        import torch_pruning
    except ImportError:
        raise InvkitError(f"pruning needs the torch-pruning package: {EXTRA}") from None
    return torch_pruning


@dataclass(frozen=True)
class PruneConfig:
    """Settings of :func:`prune`.

    Exactly one of ``target_macs`` (the fraction of the teacher's MACs to keep, e.g. 0.5)
    and ``amount`` (the fraction of prunable channels to remove, e.g. 0.3) is given.
    ``steps`` pruning steps, each followed (except the last) by ``step_epochs`` of
    distillation; then ``finetune_epochs`` of it (0: none) with the settings of
    ``finetune`` (a :class:`~invkit.distill.DistillConfig`, whose own ``epochs`` is not
    used; also the seed and temperature of the Taylor-KL estimate). ``max_layer_amount``
    caps the fraction of any group's channels removed (a layer is never emptied).
    ``importance_samples`` passes over the images (with fresh sampled classes) per
    Taylor-KL estimate.

    Example:
        >>> PruneConfig(target_macs=0.5, importance="magnitude", finetune_epochs=20)
        PruneConfig(target_macs=0.5, amount=None, importance='magnitude', steps=4, ...)
    """

    target_macs: float | None = None
    amount: float | None = None
    importance: str = "taylor-kl"
    steps: int = 4
    step_epochs: int = 1
    finetune_epochs: int = 20
    finetune: DistillConfig = DistillConfig(flip=False)
    max_layer_amount: float = 0.9
    importance_samples: int = 2
    importance_batch_size: int = 128

    def __post_init__(self):
        if (self.target_macs is None) == (self.amount is None):
            raise InvkitError("give exactly one of --target-macs (fraction of MACs to keep) "
                              "and --amount (fraction of channels to remove)")
        if self.target_macs is not None and not 0 < self.target_macs < 1:
            raise InvkitError(f"--target-macs {self.target_macs} must be between 0 and 1 "
                              "(the fraction of the teacher's MACs to keep, e.g. 0.5)")
        if self.amount is not None and not 0 < self.amount < 1:
            raise InvkitError(f"--amount {self.amount} must be between 0 and 1 "
                              "(the fraction of channels to remove, e.g. 0.3)")
        if self.importance not in IMPORTANCES:
            raise InvkitError(f"unknown importance {self.importance!r} "
                              f"(valid: {', '.join(IMPORTANCES)})")
        if self.steps < 1 or self.step_epochs < 0 or self.finetune_epochs < 0:
            raise InvkitError(f"steps={self.steps} must be at least 1, step_epochs="
                              f"{self.step_epochs} and finetune_epochs={self.finetune_epochs} "
                              "0 or more")
        if not 0 < self.max_layer_amount < 1:
            raise InvkitError(f"max_layer_amount={self.max_layer_amount} must be in (0, 1)")
        if self.importance_samples < 1 or self.importance_batch_size < 1:
            raise InvkitError("importance_samples and importance_batch_size must be at least 1")


@dataclass
class PruneResult:
    """What :func:`prune` returns: the pruned network and its figures."""

    pruned: Teacher
    config: PruneConfig
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    structure: dict
    accuracy: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    finetune_history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        """A JSON-ready record (what ``prune.json`` holds, less the caller's extras)."""
        config = dataclasses.asdict(self.config)
        return {
            "pruned": self.pruned.name, "arch": self.pruned.meta.arch, "config": config,
            "macs": {"before": self.macs_before, "after": self.macs_after,
                     "ratio": self.macs_after / self.macs_before},
            "params": {"before": self.params_before, "after": self.params_after,
                       "ratio": self.params_after / self.params_before},
            "accuracy": self.accuracy, "steps": self.steps,
            "finetune_epochs": self.finetune_history, "structure": self.structure,
            "seconds": round(self.seconds, 2),
        }


# --------------------------------------------------------------------------- graph


def _example(teacher: Teacher) -> torch.Tensor:
    device = next(teacher.module.parameters()).device
    size = teacher.meta.input_size
    return torch.zeros(1, 3, size, size, device=device)


def count_macs(module: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass on ``example``, as torch-pruning counts them.

    Example:
        >>> import torch
        >>> from invkit.teachers import load_teacher
        >>> count_macs(load_teacher("digits").module, torch.zeros(1, 3, 32, 32))
        (3598986, 78330)
    """
    tp = require_torch_pruning()
    was_training = module.training
    module.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(module, example)
    module.train(was_training)
    return int(macs), int(params)


def output_layers(module: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The conv/linear layers whose output is the network's output (never pruned: their
    outputs are the classes). Found by running ``example`` through the network.

    Example:
        >>> import torch
        >>> from invkit.teachers import load_teacher
        >>> output_layers(load_teacher("digits").module, torch.zeros(1, 3, 32, 32))
        [Linear(in_features=64, out_features=10, bias=True)]
    """
    # The outputs are kept alive with their layer: a freed one's id can be reused by a
    # later tensor (the network's output), which then looked like that layer's output.
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: produced.__setitem__(id(o), (m, o)))
             for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            out = module.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    if isinstance(out, torch.Tensor) and id(out) in produced:
        return [produced[id(out)][0]]
    # The output went through something else (e.g. a final pooling): protect the last layer.
    last = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return last[-1:]


def build_graph(teacher: Teacher, module: nn.Module | None = None):
    """torch-pruning's dependency graph of ``module`` (default: the teacher's), traced on a
    blank input; a network the tracer cannot follow is a one-line error."""
    tp = require_torch_pruning()
    module = teacher.module if module is None else module
    # The tracer follows the autograd graph: frozen weights (a teacher after distill()
    # has requires_grad off) would leave it nothing to follow.
    frozen = [p for p in module.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        return tp.DependencyGraph().build_dependency(module, example_inputs=_example(teacher))
    except InvkitError:
        raise
    except Exception as error:  # noqa: BLE001 - any tracing failure is the network's shape
        text = " ".join(str(error).split())[:160]
        raise InvkitError(f"torch-pruning cannot trace teacher {teacher.name!r} to find its "
                          f"coupled channels ({type(error).__name__}: {text})") from None
    finally:
        for p in frozen:
            p.requires_grad_(False)


def prunable_groups(graph, ignored: list[nn.Module]) -> dict[str, object]:
    """The groups of coupled channels, keyed by the name of each group's root layer."""
    names = {m: n for n, m in graph.model.named_modules()}
    groups = {}
    for group in graph.get_all_groups(ignored_layers=ignored,
                                      root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        if isinstance(root, nn.Conv2d) and root.groups > 1:
            # Grouped convolutions follow their input group, never roots: root the group at
            # the layer producing those channels (torch-pruning may have rooted it here,
            # which left e.g. MobileNetV2's expansion convolutions unpruned).
            root = next((item.dep.target.module for item in group if _produces(graph, item)),
                        None)
            if root is None or names[root] in groups:
                continue
            group = graph.get_pruning_group(root, _root_fn(root), list(range(_channels(root))))
        groups[names[root]] = group
    if not groups:
        raise InvkitError("the teacher has no prunable channels (no conv or linear layer "
                          "besides the classifier that torch-pruning can shrink)")
    return groups


def _produces(graph, item) -> bool:
    """Whether ``item`` of a group removes output channels of an ungrouped conv or linear."""
    layer = item.dep.target.module
    return (isinstance(layer, (nn.Conv2d, nn.Linear)) and getattr(layer, "groups", 1) == 1
            and graph.is_out_channel_pruning_fn(item.dep.handler))


def _root_fn(module: nn.Module):
    tp = require_torch_pruning()
    return (tp.prune_conv_out_channels if isinstance(module, nn.Conv2d)
            else tp.prune_linear_out_channels)


def _channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def remove_channels(graph, selection: dict[str, list[int]]) -> None:
    """Remove channels ``selection[root_name]`` (indices of the root layer's outputs) with
    every coupled channel, in place."""
    modules = dict(graph.model.named_modules())
    for name, idxs in selection.items():
        if idxs:
            layer = modules[name]
            graph.get_pruning_group(layer, _root_fn(layer), sorted(int(i) for i in idxs)).prune()


# --------------------------------------------------------------------------- schedule


def _keep_counts(original: dict[str, int], fraction: float, cap: float) -> dict[str, int]:
    """Channels each group keeps when a ``fraction`` of every group is removed (capped)."""
    fraction = min(fraction, cap)
    return {n: max(1, math.ceil(c * (1 - cap)), round(c * (1 - fraction)))
            for n, c in original.items()}


def _macs_with(teacher: Teacher, ignored_names: list[str], keep: dict[str, int]) -> int:
    """MACs of the teacher's network with each group cut to ``keep`` channels (on a copy;
    which channels does not matter for the count)."""
    clone = copy.deepcopy(teacher.module)
    graph = build_graph(teacher, clone)
    modules = dict(clone.named_modules())
    groups = prunable_groups(graph, [modules[n] for n in ignored_names])
    remove_channels(graph, {n: list(range(_channels(modules[n]) - keep[n]))
                            for n in groups if n in keep})
    return count_macs(clone, _example(teacher))[0]


def macs_model(teacher: Teacher, graph, groups: dict[str, object],
               original: dict[str, int]):
    """A fast estimate of the MACs when each group keeps ``keep[name]`` channels:
    torch-pruning's per-layer count of the unpruned network, each layer scaled by the kept
    fraction of its input group and of its output group (conv and linear MACs are
    bilinear in their channel counts). Returns ``estimate(keep) -> MACs``.
    """
    tp = require_torch_pruning()
    module = teacher.module
    with torch.no_grad():
        _, _, flops, _ = tp.utils.count_ops_and_params(module.eval(), _example(teacher),
                                                       layer_wise=True)
    leaves = {m: f for m, f in flops.items() if f and not list(m.children())}
    roles: dict[nn.Module, list] = {}
    for name, group in groups.items():
        for item in group:
            layer = item.dep.target.module
            if layer in leaves:
                side = 1 if graph.is_out_channel_pruning_fn(item.dep.handler) else 0
                roles.setdefault(layer, [None, None])[side] = name
    for layer, role in roles.items():
        if isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels:
            role[0] = None  # depthwise: MACs follow the output channels only

    def estimate(keep: dict[str, int]) -> float:
        total = 0.0
        for layer, value in leaves.items():
            scale = 1.0
            for name in roles.get(layer, ()):
                if name is not None:
                    scale *= keep[name] / original[name]
            total += value * scale
        return total

    return estimate


def plan_schedule(teacher: Teacher, config: PruneConfig, ignored_names: list[str],
                  original: dict[str, int], macs_before: int, estimate) -> list[dict[str, int]]:
    """Per step, the channels each group keeps: equal steps of MACs (``target_macs``) or
    of channels (``amount``). ``estimate`` is :func:`macs_model`'s; the last step is
    checked with a real count. An unreachable MACs target is a one-line error.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> teacher = load_teacher("digits")
        >>> m, e = None, None       # MACs and estimate: only target_macs needs them
        >>> plan_schedule(teacher, PruneConfig(amount=0.5, steps=2), ["fc"], {"conv1": 16}, m, e)
        [{'conv1': 12}, {'conv1': 8}]
    """
    cap = config.max_layer_amount
    if config.amount is not None:
        return [_keep_counts(original, config.amount * s / config.steps, cap)
                for s in range(1, config.steps + 1)]
    target = config.target_macs * macs_before
    floor = _macs_with(teacher, ignored_names, _keep_counts(original, cap, cap))
    if floor > target:
        raise InvkitError(
            f"--target-macs {config.target_macs} cannot be reached: removing "
            f"{100 * cap:.0f}% of every prunable layer's channels still leaves "
            f"{100 * floor / macs_before:.1f}% of the MACs (the classifier and unprunable "
            "layers); choose a larger target")
    fractions = [_bisect(lambda f: estimate(_keep_counts(original, f, cap)),
                         macs_before - (macs_before - target) * s / config.steps, cap)
                 for s in range(1, config.steps + 1)]
    # The estimate ignores small terms (biases): make sure the last step reaches the target.
    while (fractions[-1] < cap and _macs_with(
            teacher, ignored_names, _keep_counts(original, fractions[-1], cap)) > target):
        fractions[-1] = min(cap, fractions[-1] + 0.01)
    return [_keep_counts(original, f, cap) for f in fractions]


def _bisect(macs_at, goal: float, cap: float, rounds: int = 30) -> float:
    """The smallest removed fraction in [0, cap] whose MACs are at most ``goal``."""
    low, high = 0.0, cap
    for _ in range(rounds):
        mid = (low + high) / 2
        if macs_at(mid) <= goal:
            high = mid
        else:
            low = mid
    return high


# --------------------------------------------------------------------------- importance


def _watched_layers(module: nn.Module, ignored: list[nn.Module]) -> dict[str, nn.Module]:
    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
    return {n: m for n, m in module.named_modules() if isinstance(m, kinds) and m not in ignored}


def taylor_terms(teacher: Teacher, pruned: Teacher, images: torch.Tensor,
                 ignored: list[nn.Module], config: PruneConfig, generator: torch.Generator,
                 progress: ProgressDisplay | None = None) -> dict[str, torch.Tensor]:
    """Per image and channel, ``sum_{h,w} d(-log p_pruned(y|x))/da * a`` for every conv,
    linear and BatchNorm output ``a`` of ``pruned``, with ``y`` drawn from the teacher's
    softmax at the fine-tuning temperature (see the module docstring). Returns
    ``{layer name: (images * importance_samples, channels)}``.
    """
    device = torch.device(config.finetune.device)
    temperature = config.finetune.temperature
    net = pruned.module.to(device).eval()
    teacher.module.to(device).eval()
    layers = _watched_layers(net, ignored)
    terms: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def watch(name):
        def hook(module, inputs, output):
            if not output.requires_grad:
                return  # a no-grad pass (the teacher's, when it is the same module)
            value = output.detach()

            def on_grad(grad):
                dims = tuple(range(2, grad.ndim))
                product = grad * value
                terms[name].append((product.sum(dims) if dims else product).float().cpu())
            output.register_hook(on_grad)
        return hook

    hooks = [m.register_forward_hook(watch(n)) for n, m in layers.items()]
    n, bs = images.shape[0], config.importance_batch_size
    if progress is not None:
        progress.start_task(f"taylor-kl importance of {pruned.name}",
                            config.importance_samples * math.ceil(n / bs))
    try:
        for _ in range(config.importance_samples):
            for first in range(0, n, bs):
                x01 = to_float01(images[first:first + bs]).to(device)
                with torch.no_grad():
                    probs = F.softmax(teacher.module(teacher.prepare(x01)).float() / temperature, 1)
                sampled = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
                x = pruned.prepare(x01).requires_grad_(True)
                log_p = F.log_softmax(net(x).float() / temperature, 1)
                # A sum, not a mean: each image's gradient is that of its own term.
                loss = -log_p.gather(1, sampled).sum()
                torch.autograd.grad(loss, x)  # runs the activation hooks; no weight grads
                if progress is not None:
                    progress.advance()
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(chunks) for name, chunks in terms.items() if chunks}


def _out_items(graph, group):
    """(layer, indices in the layer, indices in the root) of each output-channel item."""
    for item in group:
        dep = item.dep
        if graph.is_out_channel_pruning_fn(dep.handler):
            yield dep.target.module, list(item.idxs), list(item.root_idxs)


def taylor_group_scores(graph, group, terms: dict[str, torch.Tensor],
                        names: dict[nn.Module, str]) -> torch.Tensor:
    """The Taylor-KL score of each channel of ``group`` (root order): per image, the terms
    of the coupled layers' outputs add up; then squared and averaged over images.

    BatchNorm outputs stand for their channel when the group has any (the conv output
    before an affine BatchNorm is not what removing the channel takes away)."""
    root = group[0].dep.target.module
    items = [(layer, idxs, ridxs) for layer, idxs, ridxs in _out_items(graph, group)
             if names.get(layer) in terms]
    norms = [it for it in items if isinstance(it[0], (nn.BatchNorm1d, nn.BatchNorm2d))]
    items = norms or [it for it in items if isinstance(it[0], (nn.Conv2d, nn.Linear))]
    rows = next(iter(terms.values())).shape[0]
    total = torch.zeros(rows, _channels(root))
    for layer, idxs, ridxs in items:
        total[:, ridxs] += terms[names[layer]][:, idxs]
    return total.pow(2).mean(0)


def group_scores(graph, groups: dict[str, object], config: PruneConfig,
                 terms: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Importance of every channel of every group (root order), low = removed first."""
    tp = require_torch_pruning()
    if config.importance == "magnitude":
        magnitude = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean",
                                                           normalizer=None)
        return {name: magnitude(group).detach().cpu() for name, group in groups.items()}
    names = {m: n for n, m in graph.model.named_modules()}
    return {name: taylor_group_scores(graph, group, terms, names)
            for name, group in groups.items()}


# --------------------------------------------------------------------------- structure


def pruned_structure(original: nn.Module, pruned: nn.Module) -> dict[str, dict]:
    """The conv, linear and BatchNorm layers whose shape pruning changed, by module name
    (:func:`invkit.teachers.checkpoint.changed_layers`).

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> teacher = load_teacher("digits")
        >>> images = digits_dataset("heldout")[0][:32]
        >>> result = prune(teacher, images,
        ...                config=PruneConfig(target_macs=0.5, steps=1, finetune_epochs=0))
        >>> pruned_structure(teacher.module, result.pruned.module)["conv1"]
        {'type': 'Conv2d', 'in': 3, 'out': 11, 'groups': 1}
    """
    return changed_layers(original, pruned)


def save_pruned(result: PruneResult, out_dir: Path | str, extra: dict | None = None) -> Path:
    """Write ``pruned.safetensors`` (loadable as ``checkpoint:PATH``: the changed shapes are
    in its metadata) and ``prune.json`` into ``out_dir``, atomically; returns the weights path.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> images = digits_dataset("heldout")[0][:32]
        >>> result = prune(load_teacher("digits"), images,
        ...                config=PruneConfig(target_macs=0.5, steps=1, finetune_epochs=0))
        >>> path = save_pruned(result, "pruned/digits-50")
        >>> path
        PosixPath('pruned/digits-50/pruned.safetensors')
        >>> load_teacher(f"checkpoint:{path}").module.conv1   # rebuilt at the pruned widths
        Conv2d(3, 11, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    from invkit.teachers import save_teacher

    out_dir = Path(out_dir)
    path = out_dir / WEIGHTS_FILE
    save_teacher(result.pruned, path, extra={PRUNED_KEY: json.dumps(result.structure)})
    record = {**result.summary(), "weights": str(path)}
    record.update(extra or {})
    write_json(out_dir / RECORD_FILE, record)
    return path


# --------------------------------------------------------------------------- pruning


def check_data(teacher: Teacher, images: torch.Tensor, targets: torch.Tensor | None,
               what: str = "--data") -> None:
    """Refuse images the teacher cannot take as they are (size, class indices)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise InvkitError(f"{what} holds no images")
    size = teacher.meta.input_size
    if tuple(images.shape[-2:]) != (size, size):
        raise InvkitError(f"{what} images are {images.shape[-1]}x{images.shape[-2]} but teacher "
                          f"{teacher.name!r} takes {size}x{size}: generate them with this "
                          "teacher")
    if targets is not None and targets.numel() and int(targets.max()) >= teacher.meta.num_classes:
        raise InvkitError(f"{what} has class index {int(targets.max())} but teacher "
                          f"{teacher.name!r} has {teacher.meta.num_classes} classes: were the "
                          "images generated from another teacher?")


def prune(teacher: Teacher, images: torch.Tensor, targets: torch.Tensor | None = None, *,
          config: PruneConfig, test: tuple[torch.Tensor, torch.Tensor] | None = None,
          progress: ProgressDisplay | None = None) -> PruneResult:
    """Prune a copy of ``teacher`` on ``images`` (uint8 or float in [0, 1]); the teacher is
    left unchanged. ``test`` = real (images, targets) for the accuracy figures.

    Example:
        >>> from invkit.teachers import load_teacher
        >>> from invkit.teachers.digits import digits_dataset
        >>> teacher = load_teacher("digits")
        >>> images = digits_dataset("heldout")[0][:32]
        >>> result = prune(teacher, images, config=PruneConfig(target_macs=0.5, steps=2,
        ...                                                    finetune_epochs=0))
        >>> result.macs_after <= 0.5 * result.macs_before
        True
    """
    check_data(teacher, images, targets)
    started = time.perf_counter()
    device = torch.device(config.finetune.device)
    teacher.module.to(device).eval()
    example = _example(teacher)
    ignored_names = _ignored_names(teacher, example)
    macs_before, params_before = count_macs(teacher.module, example)
    graph = build_graph(teacher)  # a teacher the tracer cannot follow fails here, first
    modules = dict(teacher.module.named_modules())
    groups = prunable_groups(graph, [modules[n] for n in ignored_names])
    original = {name: _channels(modules[name]) for name in groups}
    plan = plan_schedule(teacher, config, ignored_names, original, macs_before,
                         macs_model(teacher, graph, groups, original))

    if progress is not None:
        goal = (f"{100 * config.target_macs:g}% of its MACs" if config.target_macs is not None
                else f"{100 * config.amount:g}% fewer channels")
        progress.log(f"pruning {teacher.name} to {goal} ({config.importance}, {len(plan)} "
                     f"steps) on {images.shape[0]} images")
    pruned = Teacher(module=copy.deepcopy(teacher.module), meta=teacher.meta,
                     name=f"{teacher.name}-pruned")
    for p in pruned.module.parameters():
        p.requires_grad_(True)
    result = PruneResult(pruned=pruned, config=config, macs_before=macs_before,
                         macs_after=macs_before, params_before=params_before,
                         params_after=params_before, structure={})
    if test is not None:
        result.accuracy["before"] = accuracy_on(teacher, test)
    generator = torch.Generator().manual_seed(config.finetune.seed)
    for index, keep in enumerate(plan, start=1):
        record = _prune_step(teacher, pruned, images, ignored_names, keep, config, generator,
                             progress)
        record["step"] = index
        if index < len(plan) and config.step_epochs > 0:
            tuned = distill(teacher, pruned, images, targets, progress=progress,
                            config=dataclasses.replace(config.finetune, epochs=config.step_epochs,
                                                       seed=config.finetune.seed + index))
            record["distill_loss"] = tuned.history[-1]["loss"]
        if test is not None:
            record["test_acc"] = accuracy_on(pruned, test)
        result.steps.append(record)
        if progress is not None:
            progress.log(_step_line(record, macs_before))
    result.macs_after, result.params_after = count_macs(pruned.module, example)
    result.structure = pruned_structure(teacher.module, pruned.module)
    if test is not None:
        result.accuracy["pruned"] = result.steps[-1]["test_acc"]
    if config.finetune_epochs > 0:
        tuned = distill(teacher, pruned, images, targets, test=test, progress=progress,
                        config=dataclasses.replace(config.finetune, epochs=config.finetune_epochs))
        result.finetune_history = tuned.history
        if test is not None:
            result.accuracy["finetuned"] = tuned.final_test_acc
    pruned.module.eval()
    result.seconds = time.perf_counter() - started
    return result


def _ignored_names(teacher: Teacher, example: torch.Tensor) -> list[str]:
    names = {m: n for n, m in teacher.module.named_modules()}
    return [names[m] for m in output_layers(teacher.module, example)]


def _prune_step(teacher: Teacher, pruned: Teacher, images: torch.Tensor,
                ignored_names: list[str], keep: dict[str, int], config: PruneConfig,
                generator: torch.Generator, progress: ProgressDisplay | None) -> dict:
    """Estimate importance on the current network and cut each group to ``keep`` channels."""
    modules = dict(pruned.module.named_modules())
    ignored = [modules[n] for n in ignored_names]
    graph = build_graph(pruned)
    groups = prunable_groups(graph, ignored)
    terms = None
    if config.importance == "taylor-kl":
        terms = taylor_terms(teacher, pruned, images, ignored, config, generator, progress)
    scores = group_scores(graph, groups, config, terms)
    selection = {}
    for name, score in scores.items():
        surplus = _channels(modules[name]) - keep[name]
        selection[name] = torch.argsort(score, stable=True)[:max(surplus, 0)].tolist()
    remove_channels(graph, selection)
    macs, params = count_macs(pruned.module, _example(pruned))
    return {"macs": macs, "params": params,
            "channels": {n: _channels(modules[n]) for n in groups}}


def _step_line(record: dict, macs_before: int) -> str:
    line = (f"step {record['step']}: {100 * record['macs'] / macs_before:.1f}% of the MACs, "
            f"{record['params']} parameters")
    if "test_acc" in record:
        line += f", test accuracy {100 * record['test_acc']:.2f}%"
    return line


__all__ = ["IMPORTANCES", "PruneConfig", "PruneResult", "require_torch_pruning", "count_macs",
           "output_layers", "build_graph", "prunable_groups", "remove_channels",
           "macs_model", "plan_schedule", "taylor_terms", "taylor_group_scores", "group_scores",
           "pruned_structure", "save_pruned", "check_data", "prune"]
