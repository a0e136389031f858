"""Resolve a run request into everything a run will use, before any weights load.

Every check that can run before the output directory exists runs here (teacher,
verifier and student names, the preset, targets, the plan, the method's configuration),
so a corrected rerun is never refused as "not empty", and ``--dry-run`` shows exactly
what the run will use.

Example:
    >>> run = resolve_run(RunRequest(teacher="digits", images_per_class=10))
    >>> run.identity.preset, len(run.batches)
    ('digits', 1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invkit.errors import InvkitError
from invkit.methods import Context, choose_preset, merge_options
from invkit.objective import (
    Objective, PriorRequest, build_objective, merge_requests, parse_prior, set_weight,
)
from invkit.pipeline.plan import Batch, plan_batches
from invkit.pipeline.record import RunIdentity, RunInfo, RunRequest
from invkit.specs import MethodSpec, Preset, TeacherMeta

DEFAULT_TEACHER = "digits"  # offline: bundled weights, no download
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True, eq=False)
class ResolvedRun:
    """A run, fully resolved: the records, the objective, the method's config, the plan."""

    spec: MethodSpec
    request: RunRequest
    identity: RunIdentity
    info: RunInfo
    objective: Objective
    config: Any
    meta: TeacherMeta
    batches: tuple[Batch, ...]

    @property
    def output(self) -> Path:
        return Path(self.info.output)

    def describe(self) -> list[str]:
        """The lines ``--dry-run`` prints: objective, plan, identity and info."""
        import json

        from invkit.output import to_jsonable

        b = self.batches
        images = sum(len(x.targets) for x in b)
        first = list(b[0].targets)
        shown = ", ".join(map(str, first[:20])) + (", ..." if len(first) > 20 else "")
        lines = [f"objective: {self.objective.describe()}",
                 f"plan: {len(b)} batch(es), {images} images; first batch targets [{shown}]",
                 f"preset: {self.identity.preset} ({self.info.preset_reason})", "identity:"]
        for key, value in self.identity.to_json().items():
            lines.append(f"  {key}: {json.dumps(to_jsonable(value))}")
        lines.append("info:")
        for key, value in self.info.to_json().items():
            lines.append(f"  {key}: {json.dumps(value)}")
        return lines


def resolve_run(request: RunRequest, options: Any = None, *,
                spec: MethodSpec | None = None) -> ResolvedRun:
    """Everything a run will use, checked, without loading weights or writing files.

    ``options`` is an instance of the method's options dataclass (``None``: all defaults).
    """
    from invkit.teachers import check_fits, find_teacher, preview_teacher

    spec = spec or _method(request.method)
    teacher_spec = request.teacher or request.arch
    preset = None
    if teacher_spec is None:
        # A bare run: the offline default teacher, or the named preset's own teacher.
        preset = choose_preset(spec.presets, None, request.preset) if request.preset else None
        teacher_spec = preset.teacher if preset is not None else DEFAULT_TEACHER
    arch = request.arch if request.teacher else None
    meta = preview_teacher(teacher_spec, arch, request.weights)
    _check_batchnorm(spec, teacher_spec, arch)
    preset = choose_preset(spec.presets, meta, request.preset)
    reason = _preset_reason(preset, meta, request.preset)

    objective = build_objective(prior_requests(spec, preset, request))
    if not len(objective):
        raise InvkitError("the objective is empty: give at least one --prior "
                          "(see 'invkit priors list')")
    bs = request.bs or (preset.bs if preset else DEFAULT_BATCH_SIZE)
    merged = merge_options(spec.options() if spec.options else None,
                           preset.options if preset else None, options)
    from invkit.distributed import local_device

    device = local_device(request.device)  # a bad or missing device fails here
    context = Context(meta=meta, precision=request.precision,
                      checkpoint_every=request.save_every, batch_size=bs, device=device)
    config = spec.configure(merged, context) if spec.configure else merged

    verifier = request.verifier_arch
    if verifier is None and request.verifier:
        if preset is None or preset.verifier is None:
            raise InvkitError(f"preset {preset.name if preset else None!r} has no default "
                              "verifier; name one with --verifier-arch SPEC")
        verifier = preset.verifier
    weights, verifier_weights = _preset_weights(request, preset, teacher_spec, verifier)
    for other in (verifier, request.student):
        if other:
            find_teacher(other)
    if verifier:
        check_fits(meta, teacher_spec, preview_teacher(verifier, None, verifier_weights), verifier)

    targets, source = _targets(request, preset, meta)
    batches = tuple(plan_batches(
        num_classes=meta.num_classes, batch_size=bs, targets=targets,
        num_batches=request.num_batches, images_per_class=request.images_per_class,
        random_labels=request.random_label, seed=request.seed))
    exp_name = request.exp_name or _default_name(teacher_spec, preset)
    output = request.output if request.output is not None else str(Path("generations") / exp_name)
    if not str(output).strip():
        raise InvkitError("the output path is empty: give a directory with --output")
    identity = RunIdentity(
        method=spec.name, teacher=teacher_spec, arch=arch, weights=weights,
        student=request.student, verifier=verifier, verifier_weights=verifier_weights,
        preset=preset.name if preset else None, objective=objective.describe(),
        priors=tuple((p.name, w, tuple(p.options.items())) for w, p in objective),
        config=config, precision=request.precision, bs=bs, targets=targets,
        targets_source=source, random_labels=request.random_label,
        num_batches=request.num_batches, images_per_class=request.images_per_class,
        seed=request.seed, format=request.format, shard_size=request.shard_size,
    )
    info = RunInfo(output=str(output), exp_name=exp_name, device=device,
                   save_every=request.save_every, preset_reason=reason)
    return ResolvedRun(spec=spec, request=request, identity=identity, info=info,
                       objective=objective, config=config, meta=meta, batches=batches)


def prior_requests(spec: MethodSpec, preset: Preset | None,
                   request: RunRequest) -> list[PriorRequest]:
    """The method's default priors, the preset's adjustments, ``--prior`` entries, then
    the method's shorthand flags (``--r-feature``...), in that order of precedence.

    Example:
        >>> from invkit.objective import parse_prior
        >>> from invkit.registry import registry
        >>> spec = registry("method").get("deepinversion")
        >>> [r.name for r in prior_requests(spec, None, RunRequest(no_default_priors=True,
        ...     priors=(parse_prior("tv-l2"),)))]
        ['tv-l2']
    """
    defaults = [parse_prior(p) for p in spec.default_priors]
    if preset is not None:
        defaults = merge_requests(defaults, [parse_prior(p) for p in preset.priors])
    requests = merge_requests(defaults, request.priors, use_defaults=not request.no_default_priors)
    flags = {flag.name: flag for flag in spec.prior_flags}
    for name, value in request.prior_flags:
        if name not in flags:
            raise InvkitError(f"method {spec.name!r} has no prior flag {name!r} "
                              f"(valid: {', '.join(sorted(flags)) or 'none'})")
        flag = flags[name]
        if flag.option is None:
            requests = set_weight(requests, flag.prior, value)
        elif any(r.name == flag.prior for r in requests):
            requests = set_weight(requests, flag.prior, None, **{flag.option: value})
    return requests


def _method(name: str) -> MethodSpec:
    from invkit.registry import registry

    return registry("method").get(name)


def _check_batchnorm(spec: MethodSpec, teacher: str, arch: str | None) -> None:
    """Refuse a BatchNorm-free teacher for a BN-only method before any weights load."""
    if not spec.needs_batchnorm:
        return
    from invkit.registry import registry
    from invkit.teachers import spec_has_batchnorm

    if spec_has_batchnorm(teacher, arch) is not False:
        return  # has BatchNorm, or unknown until loaded (the prior says so then)
    others = [m.name for m in registry("method") if not m.needs_batchnorm]
    hint = (f"; methods that work without it: {', '.join(others)}" if others
            else "; no installed method works without it")
    raise InvkitError(f"method {spec.name!r} needs a teacher with BatchNorm layers, and "
                      f"{teacher!r} has none{hint}")


def _targets(request: RunRequest, preset: Preset | None,
             meta: TeacherMeta) -> tuple[tuple[int, ...] | None, str]:
    if request.targets is not None:
        return tuple(request.targets), "--targets"
    if request.random_label or preset is None or preset.targets is None:
        return None, "class-balanced"
    if all(0 <= t < meta.num_classes for t in preset.targets):
        return tuple(preset.targets), f"preset {preset.name}"
    # The preset's hand-picked classes do not fit this teacher: balance instead.
    return None, "class-balanced"


def _preset_weights(request: RunRequest, preset: Preset | None, teacher: str,
                    verifier: str | None) -> tuple[str | None, str | None]:
    """The given weights, else the preset's for its own teacher and verifier (the ones
    the published runs used, e.g. torchvision's original ImageNet weights)."""
    weights, verifier_weights = request.weights, request.verifier_weights
    if preset is not None:
        if weights is None and teacher == preset.teacher:
            weights = preset.weights
        if verifier_weights is None and verifier and verifier == preset.verifier:
            verifier_weights = preset.verifier_weights
    return weights, verifier_weights


def _preset_reason(preset: Preset | None, meta: TeacherMeta, named: str | None) -> str:
    if preset is None:
        return "the method has no presets"
    if named:
        return "--preset"
    if meta.family and meta.family in preset.families:
        return f"the teacher's dataset family is {meta.family}"
    if preset.max_input_size is not None:
        return f"the teacher's input is {meta.input_size} px (at most {preset.max_input_size})"
    return "the method's general default"


def _default_name(teacher: str, preset: Preset | None) -> str:
    name = Path(str(teacher)).name
    if preset is not None and name != preset.name:
        name = f"{preset.name}-{name}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)

