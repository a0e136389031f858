"""Time one DeepInversion step: invkit's loop vs a faithful naive step (prints figures).

The naive step reproduces what makes the published implementation slow, on the same
model, batch, resolution and loss terms:
- teacher weights keep ``requires_grad=True`` (the backward also computes weight grads),
- BN variance via permute + contiguous + view + var (a full copy per BN layer),
- ``loss.item()`` every step (a device sync) for best-image bookkeeping,
- plain (non-fused) Adam.

The invkit figure is the real loop: ``DeepInversion.generate``, timed over ``--steps``
iterations (augmentation, objective, Adam, clipping, best-iterate tracking) between its
per-iteration callbacks. Both run in float32 in one process, alternating, best of
``--repeats``. Also printed: the bare step (one forward of the frozen teacher and one
backward to the input, the least any step must do, in both memory layouts: invkit's
loop runs channels-last by default) and invkit's step in bf16 autocast.

    python benchmarks/bench_step.py                       # ResNet-18, 64 px, batch 16, CPU
    python benchmarks/bench_step.py --arch resnet50 --resolution 224 --batch 64 --device cuda
    python benchmarks/bench_step.py --arch digits --resolution 32 --batch 100 --compile
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from invkit import load_teacher
from invkit.objective import build_objective, parse_prior
from invkit.specs import Stage, Teacher, TeacherMeta
from invkit_plugins.deepinversion.method import DeepInversion, DIConfig, augment

PRIORS = ["cross-entropy", "bn-stats:0.01,first_bn_multiplier=10", "tv-l2:1e-4", "l2:1e-5"]


def naive_steps(module: nn.Module, teacher: Teacher, targets: torch.Tensor, size: int,
                steps: int, seed: int = 0, keep: bool = False):
    """Run ``steps`` naive iterations; return seconds per step (the best images with
    ``keep``)."""
    device = targets.device
    module.to(memory_format=torch.contiguous_format)  # as published (invkit's loop sets its own)
    for p in module.parameters():
        p.requires_grad_(True)  # as published: weight gradients computed, never used
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    losses: list[torch.Tensor] = [None] * len(bns)

    def make_hook(i):
        def hook(mod, inputs, output):
            x = inputs[0]
            c = x.shape[1]
            mean = x.mean([0, 2, 3])
            var = x.permute(1, 0, 2, 3).contiguous().view([c, -1]).var(1, unbiased=False)
            losses[i] = (torch.norm(mod.running_var - var, 2)
                         + torch.norm(mod.running_mean - mean, 2))
        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(bns)]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((targets.numel(), 3, size, size), generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.2, betas=(0.5, 0.9), eps=1e-8)
    low, high = teacher.pixel_bounds(x)
    rng = random.Random(seed)
    best_cost, best_x = float("inf"), None  # kept as the published loop keeps it
    try:
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            view = augment(x, 1, 2, True, rng)
            opt.zero_grad()
            module.zero_grad()
            logits = module(view)
            loss = F.cross_entropy(logits, targets)
            loss = loss + 0.01 * (10 * losses[0] + sum(losses[1:]))
            d1 = view[:, :, :, :-1] - view[:, :, :, 1:]
            d2 = view[:, :, :-1, :] - view[:, :, 1:, :]
            d3 = view[:, :, 1:, :-1] - view[:, :, :-1, 1:]
            d4 = view[:, :, :-1, :-1] - view[:, :, 1:, 1:]
            loss = loss + 1e-4 * (torch.norm(d1) + torch.norm(d2) + torch.norm(d3) + torch.norm(d4))
            loss = loss + 1e-5 * torch.norm(view.view(view.shape[0], -1), dim=1).mean()
            if loss.item() < best_cost:  # a device sync every step
                best_cost, best_x = loss.item(), x.detach().clone()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.data = torch.max(torch.min(x, high), low)
        _sync(device)
        return best_x if keep else (time.perf_counter() - started) / steps
    finally:
        for h in handles:
            h.remove()


def invkit_steps(teacher: Teacher, targets: torch.Tensor, size: int, steps: int,
                 seed: int = 0, amp: str = "fp32", compile: bool = False) -> float:
    """Run ``steps`` iterations of the real invkit loop; return seconds per step.

    Timed between the loop's first and last per-iteration callbacks, so the batch's
    one-off set-up (hooks, optimiser) and its final predictions are not counted as steps.
    """
    objective = build_objective([parse_prior(p) for p in PRIORS])
    config = DIConfig(plan=(Stage(steps + 1, 1),), lr=0.2, jitter=2, flip=True, clip=True,
                      resolution=size, save_every=10**9, lr_schedule="warmup-cosine,warmup=1",
                      amp=amp, compile=compile)
    method = DeepInversion(teacher, objective, config=config)
    stamps: list[float] = []

    def callback(_checkpoint) -> None:
        _sync(targets.device)
        stamps.append(time.perf_counter())

    method.generate(targets, seed=seed, callback=callback)
    return (stamps[-1] - stamps[0]) / steps


def bare_steps(module: nn.Module, targets: torch.Tensor, size: int, steps: int,
               seed: int = 0, channels_last: bool = False) -> float:
    """The least a step must do: one forward of the frozen teacher and one backward to
    the input (cross-entropy only, no priors, no optimiser), in the contiguous or the
    channels-last layout; seconds per step."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    module.to(memory_format=layout)
    for p in module.parameters():
        p.requires_grad_(False)
    x = torch.randn(targets.numel(), 3, size, size, generator=torch.Generator().manual_seed(seed))
    x = x.to(targets.device).contiguous(memory_format=layout).requires_grad_(True)
    _sync(targets.device)
    started = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(module(x), targets)
        (grad,) = torch.autograd.grad(loss, x)
    _sync(targets.device)
    for p in module.parameters():
        p.requires_grad_(True)
    return (time.perf_counter() - started) / steps


def bench_teacher(arch: str, resolution: int, device: torch.device | str = "cpu") -> Teacher:
    """A torchvision network with random weights (1,000 classes) at ``resolution``, or an
    invkit teacher by name (e.g. the bundled ``digits``, at 32 px), in eval mode."""
    if hasattr(torchvision.models, arch):
        module = getattr(torchvision.models, arch)(weights=None).to(device).eval()
        meta = TeacherMeta(arch=arch, input_size=resolution, num_classes=1000)
        return Teacher(module=module, meta=meta, name=arch)
    teacher = load_teacher(arch, device=device)
    teacher.module.eval()
    return teacher


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true",
                        help="also time invkit's step with --compile (compiling takes minutes "
                             "on a CPU)")
    args = parser.parse_args()

    device = torch.device(args.device)
    teacher = bench_teacher(args.arch, args.resolution, device)
    module = teacher.module
    targets = torch.arange(args.batch, device=device) % teacher.meta.num_classes

    invkit_steps(teacher, targets, args.resolution, 2)  # warm-up every path
    naive_steps(module, teacher, targets, args.resolution, 2)
    bare_steps(module, targets, args.resolution, 2)
    bare_steps(module, targets, args.resolution, 2, channels_last=True)
    if args.compile:
        invkit_steps(teacher, targets, args.resolution, 2, compile=True)  # compiles
    naive, fast, bare, bare_cl, bf16, compiled = [], [], [], [], [], []
    for _ in range(args.repeats):
        naive.append(naive_steps(module, teacher, targets, args.resolution, args.steps))
        fast.append(invkit_steps(teacher, targets, args.resolution, args.steps))
        bare.append(bare_steps(module, targets, args.resolution, args.steps))
        bare_cl.append(bare_steps(module, targets, args.resolution, args.steps,
                                  channels_last=True))
        bf16.append(invkit_steps(teacher, targets, args.resolution, args.steps, amp="bf16"))
        if args.compile:
            compiled.append(invkit_steps(teacher, targets, args.resolution, args.steps,
                                         compile=True))
    n, f, b, h = min(naive), min(fast), min(bare), min(bf16)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.arch} {args.resolution}px batch {args.batch} on {device} "
          f"({torch.get_num_threads()} threads, load {load:.2f}), best of {args.repeats} x "
          f"{args.steps} steps")
    print(f"naive step:  {1000 * n:8.1f} ms")
    print(f"invkit step: {1000 * f:8.1f} ms")
    print(f"speed-up:    {n / f:8.2f}x")
    bc = min(bare_cl)
    # invkit's loop runs channels-last by default: that is its like-for-like bare step.
    print(f"bare forward + input-backward, channels-last: {1000 * bc:8.1f} ms "
          f"(invkit step / bare = {f / bc:.3f}x)")
    print(f"bare forward + input-backward, contiguous:    {1000 * b:8.1f} ms "
          f"(invkit step / bare = {f / b:.3f}x)")
    print(f"invkit step, bf16 autocast: {1000 * h:8.1f} ms ({f / h:.2f}x the fp32 step)")
    if compiled:
        c = min(compiled)
        print(f"invkit step, --compile: {1000 * c:8.1f} ms ({f / c:.2f}x the eager step, "
              f"{c / bc:.2f}x the bare channels-last eager step)")


if __name__ == "__main__":
    main()
