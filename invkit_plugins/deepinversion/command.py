"""``invkit run deepinversion``: resolve teacher, objective and configuration, then generate.

The published script's command line works verbatim (underscore spellings are aliases)::

    invkit run deepinversion --bs=84 --do_flip --exp_name=test_rn50 --r_feature=0.01 \\
        --arch_name=resnet50 --fp16 --verifier

Coefficient flags (``--r-feature``, ``--tv-l2``, ...) are shorthands for ``--prior``
weights: they go through :func:`invkit.cli.options.resolve_prior_requests`.

Progress grids: ``progress/iter_00100.png`` ... every ``--save-every`` iterations, for
the first batch of the plan only (later batches would repeat the same picture).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import click

from invkit.cli.options import prior_options, resolve_prior_requests, teacher_options
from invkit.errors import InvkitError
from invkit.objective import build_objective, parse_prior, set_weight
from invkit_plugins.deepinversion.presets import (
    PRESETS, get_preset, get_setting, preset_for_teacher, preset_priors,
)

DEFAULT_TEACHER = "digits"  # offline: bundled weights, no download

# Shorthand flag -> the prior whose weight it sets.
SHORTHANDS = {
    "main_loss_multiplier": "cross-entropy",
    "r_feature": "bn-stats",
    "tv_l1": "tv-l1",
    "tv_l2": "tv-l2",
    "l2": "l2",
    "adi_scale": "adi",
}


def _targets(ctx, param, value):
    if value is None:
        return None
    try:
        targets = tuple(int(t) for t in value.replace(" ", "").split(",") if t != "")
        if not targets:
            raise ValueError
        return targets
    except ValueError:
        raise InvkitError(f"--targets {value!r} is not a comma-separated list of class "
                          "indices, e.g. 1,2,3") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@teacher_options
@prior_options
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="Published defaults to start from (default: from the teacher: digits "
                   "for 'digits', cifar10 for 'cifar*', else imagenet).")
@click.option("--setting-id", "--setting_id", "setting_id", type=click.IntRange(0, 2),
              default=None, help="Published setting: 0 multi-resolution 2k@half+1k@full, "
                                 "1 2k@full, 2 20k@full (default: the preset's).")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Total iterations, split across the setting's stages in proportion.")
@click.option("--bs", "--batch-size", "bs", type=click.IntRange(min=1), default=None,
              help="Images per batch.")
@click.option("--lr", type=float, default=None, help="Adam learning rate.")
@click.option("--do-flip/--no-flip", "--do_flip/--no_flip", "flip", default=None,
              help="Random horizontal flips (default: the preset's).")
@click.option("--grayscale/--color", "grayscale", default=None,
              help="Optimise one grey image shared by all input channels, for teachers "
                   "trained on grey images (default: the preset's; on for digits).")
@click.option("--jitter", type=click.IntRange(min=0), default=None,
              help="Maximum random shift in pixels (full resolution).")
@click.option("--resolution", type=click.IntRange(min=2), default=None,
              help="Image size (default: the teacher's input size).")
@click.option("--main-loss-multiplier", "--main_loss_multiplier", "main_loss_multiplier",
              type=float, default=None, help="Weight of cross-entropy.")
@click.option("--r-feature", "--r_feature", "r_feature", type=float, default=None,
              help="Weight of bn-stats.")
@click.option("--first-bn-multiplier", "--first_bn_multiplier", "first_bn_multiplier",
              type=float, default=None, help="bn-stats weight of the first BN layer.")
@click.option("--tv-l1", "--tv_l1", "tv_l1", type=float, default=None, help="Weight of tv-l1.")
@click.option("--tv-l2", "--tv_l2", "tv_l2", type=float, default=None, help="Weight of tv-l2.")
@click.option("--l2", "l2", type=float, default=None, help="Weight of l2.")
@click.option("--adi-scale", "--adi_scale", "adi_scale", type=float, default=None,
              help="Weight of adi (Adaptive DeepInversion; needs --student).")
@click.option("--student", default=None, metavar="SPEC",
              help="Student network for adi (any teacher spec).")
@click.option("--fp16", is_flag=True, help="float16 autocast with a gradient scaler.")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast (also on CPU).")
@click.option("--verifier", "use_verifier", is_flag=True,
              help="Check images with the preset's verifier (mobilenet_v2 / digits-verifier).")
@click.option("--verifier-arch", "--verifier_arch", "verifier_arch", default=None,
              metavar="SPEC", help="Verifier network (any teacher spec); implies --verifier.")
@click.option("--verifier-weights", default=None, metavar="WEIGHTS",
              help="Weights of the verifier (as --weights; default: the spec's own).")
@click.option("--random-label", "--random_label", "random_label", is_flag=True,
              help="Random (seeded) targets instead of the preset's.")
@click.option("--store-best-images", "--store_best_images", "store_best_images",
              is_flag=True, help="Accepted for compatibility: final images are always "
                                 "stored, and are the lowest-loss iterate.")
@click.option("--targets", callback=_targets, default=None, metavar="I,J,...",
              help="Target classes, cycled to fill each batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available).")
@click.option("--exp-name", "--exp_name", "exp_name", default=None,
              help="Experiment name (default output: generations/<exp-name>).")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory.")
@click.option("--save-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="Every N iterations: losses read back, verifier run, progress grid "
                   "(progress/iter_NNNNN.png, first batch only).")
@click.option("--num-batches", type=click.IntRange(min=1), default=None,
              help="Number of batches to generate.")
@click.option("--images-per-class", type=click.IntRange(min=1), default=None,
              help="Class-balanced plan with K images per class.")
@click.option("--format", "fmt", type=click.Choice(["png", "safetensors"]), default="png",
              show_default=True, help="Image files or uint8 safetensors shards.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Images per safetensors shard.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --output.")
@click.option("--overwrite", is_flag=True, help="Replace a previous run in --output.")
@click.option("--quiet", "-q", is_flag=True, help="Plain progress lines (for logs).")
def deepinversion(**opts):
    """Synthesise images from a classifier by matching its BatchNorm statistics.

    \b
    Examples:
      invkit run deepinversion --teacher digits --verifier --iterations 1000
      invkit run deepinversion --arch resnet50 --setting-id 0 --bs 84 --fp16 --verifier
      invkit run deepinversion --teacher digits --prior tv-l1:1e-4 --dry-run
    """
    run_command(opts)


def resolve(opts: dict) -> dict:
    """Turn the command's options into the resolved run configuration (no weights loaded)."""
    teacher_spec = opts["teacher"] or opts["arch"]
    if teacher_spec is None and not opts["preset"]:
        teacher_spec = DEFAULT_TEACHER  # and so its preset: a bare run is the offline default
    preset = get_preset(opts["preset"]) if opts["preset"] else preset_for_teacher(teacher_spec)
    if teacher_spec is None:
        teacher_spec = preset.teacher
    setting = opts["setting_id"]
    if setting is not None:
        get_setting(setting)
    if opts["fp16"] and opts["bf16"]:
        raise InvkitError("--fp16 and --bf16 cannot be used together: choose one")

    defaults = [parse_prior(p) for p in preset_priors(preset)]
    requests = resolve_prior_requests(
        defaults, opts["prior"], opts["no_default_priors"],
        shorthands={name: opts[flag] for flag, name in SHORTHANDS.items()},
    )
    if opts["first_bn_multiplier"] is not None and any(r.name == "bn-stats" for r in requests):
        requests = set_weight(requests, "bn-stats", None,
                              first_bn_multiplier=opts["first_bn_multiplier"])
    objective = build_objective(requests)
    if not len(objective):
        raise InvkitError("the objective is empty: give at least one --prior "
                          "(see 'invkit priors list')")

    verifier = opts["verifier_arch"]
    if verifier is None and opts["use_verifier"]:
        if preset.verifier is None:
            raise InvkitError(f"preset {preset.name!r} has no default verifier; "
                              "name one with --verifier-arch SPEC")
        verifier = preset.verifier
    targets, targets_source = opts["targets"], "--targets"
    if targets is None and not opts["random_label"] and preset.targets is not None:
        targets, targets_source = preset.targets, f"preset {preset.name}"
    teacher_name = Path(str(teacher_spec)).name
    default_name = teacher_name if teacher_name == preset.name else f"{preset.name}-{teacher_name}"
    exp_name = opts["exp_name"] or re.sub(r"[^A-Za-z0-9._-]+", "_", default_name)
    output = opts["output"] or Path("generations") / exp_name

    from invkit_plugins.deepinversion.method import DIConfig

    def given_or_preset(key: str):
        return opts[key] if opts[key] is not None else getattr(preset, key)

    config = DIConfig(
        plan=preset.resolved_plan(setting), iterations=opts["iterations"],
        lr=given_or_preset("lr"), betas=preset.resolved_betas(setting),
        jitter=given_or_preset("jitter"), flip=given_or_preset("flip"),
        clip=preset.resolved_clip(setting), grayscale=given_or_preset("grayscale"),
        amp="fp16" if opts["fp16"] else "bf16" if opts["bf16"] else "fp32",
        resolution=opts["resolution"], save_every=opts["save_every"],
    )
    return {
        "objective": objective,
        "config": config,
        "record": {
            "method": "deepinversion",
            "preset": preset.name,
            "setting_id": setting if setting is not None else preset.setting,
            "teacher": teacher_spec,
            "arch": opts["arch"],
            "weights": opts["weights"],
            "student": opts["student"],
            "verifier": verifier,
            "verifier_weights": opts["verifier_weights"],
            "objective": objective.describe(),
            "priors": [{"name": p.name, "weight": w, "options": p.options}
                       for w, p in objective],
            "bs": given_or_preset("bs"),
            "targets": list(targets) if targets is not None else None,
            "targets_source": targets_source if targets is not None else "class-balanced",
            "random_labels": bool(opts["random_label"]),
            "num_batches": opts["num_batches"],
            "images_per_class": opts["images_per_class"],
            "seed": opts["seed"],
            "exp_name": exp_name,
            "device": opts["device"] or "auto",
            "output": str(output),
            "format": opts["fmt"],
            "shard_size": opts["shard_size"],
            **config.to_dict(),
        },
        "output": Path(output),
    }


def run_command(opts: dict) -> None:
    resolved = resolve(opts)
    record, objective, config = resolved["record"], resolved["objective"], resolved["config"]
    if opts["dry_run"]:
        from invkit.teachers import find_teacher

        find_teacher(record["teacher"], opts["arch"] if opts["teacher"] else None)
        for spec in (record["verifier"], record["student"]):
            if spec:
                find_teacher(spec)
        click.echo(f"objective: {objective.describe()}")
        click.echo("config:")
        for key, value in record.items():
            click.echo(f"  {key}: {json.dumps(value, default=str)}")
        return

    from invkit.dataset import GeneratedBatch, generate_dataset, plan_batches
    from invkit.distributed import (
        init_distributed, is_main_process, local_device, shutdown_distributed,
    )
    from invkit.output import save_grid
    from invkit.progress import ProgressDisplay
    from invkit.teachers import check_verifier, load_teacher
    from invkit_plugins.deepinversion.method import DeepInversion

    device = local_device(opts["device"])
    init_distributed(device)
    record["device"] = device
    teacher = load_teacher(record["teacher"], arch=opts["arch"] if opts["teacher"] else None,
                           weights=opts["weights"], trust_checkpoint=opts["trust_checkpoint"],
                           device=device)
    verifier = student = None
    if record["verifier"]:
        verifier = load_teacher(record["verifier"], weights=opts["verifier_weights"],
                                device=device)
        check_verifier(teacher, verifier)
    if record["student"]:
        student = load_teacher(record["student"], device=device)
    num_classes = teacher.meta.num_classes
    targets = record["targets"]
    if targets is not None and record["targets_source"] != "--targets" \
            and any(not 0 <= t < num_classes for t in targets):
        # The preset's hand-picked ImageNet classes do not fit this teacher: balance instead.
        targets = record["targets"] = None
        record["targets_source"] = "class-balanced"
    if targets is not None and any(not 0 <= t < num_classes for t in targets):
        bad = next(t for t in targets if not 0 <= t < num_classes)
        raise InvkitError(f"target {bad} is out of range for teacher {teacher.name!r} "
                          f"with {num_classes} classes (valid: 0..{num_classes - 1})")
    batches = plan_batches(
        num_classes=num_classes, batch_size=record["bs"], targets=targets,
        num_batches=opts["num_batches"], images_per_class=opts["images_per_class"],
        random_labels=record["random_labels"], seed=record["seed"],
    )
    method = DeepInversion(teacher, objective, config=config, student=student,
                           verifier=verifier)
    out_dir = resolved["output"]
    stages = config.stages()
    display = ProgressDisplay(quiet=opts["quiet"], enabled=is_main_process())

    def generate(batch) -> GeneratedBatch:
        state = {"stage": 0}

        def callback(cp) -> None:
            if cp.stage != state["stage"]:
                state["stage"] = cp.stage
                display.start_task(
                    f"batch {batch.index} stage {cp.stage}/{cp.stages}"
                    f" ({stages[cp.stage - 1].downsample}x down)", cp.stage_iterations)
            display.advance()
            if cp.losses is not None:
                display.report(cp.losses, cp.verifier_accuracy)
                if batch.index == 0:
                    image01 = teacher.denormalize(cp.inputs.float()).clamp(0, 1)
                    save_grid(out_dir / "progress" / f"iter_{cp.iteration:05d}.png", image01)

        started = time.perf_counter()
        result = method.generate(list(batch.targets), seed=batch.seed, callback=callback)
        stats = {
            "device": str(device),
            "seconds": time.perf_counter() - started,
            "stage_seconds": result.timings,
            "its_per_s": result.its_per_s,
            "teacher_accuracy": result.teacher_accuracy,
            "losses": result.losses,
        }
        if result.verifier_pred is not None:
            stats["verifier_accuracy"] = result.verifier_accuracy
        return GeneratedBatch(
            images01=result.images01, targets=result.targets,
            teacher_pred=result.teacher_pred, teacher_conf=result.teacher_conf,
            verifier_pred=result.verifier_pred, losses=result.losses, stats=stats,
        )

    with display:
        summary = generate_dataset(
            batches, generate, out_dir, config=record, num_classes=num_classes,
            class_names=teacher.meta.class_names, fmt=opts["fmt"],
            shard_size=opts["shard_size"], resume=opts["resume"],
            overwrite=opts["overwrite"], progress=display,
        )
    if is_main_process():
        click.echo(_summary_line(summary, out_dir))
    shutdown_distributed()  # under torchrun this ends the process


def _summary_line(summary: dict, out_dir: Path) -> str:
    parts = [f"wrote {out_dir}"]
    for key in ("num_images", "teacher_accuracy", "verifier_accuracy"):
        value = summary.get(key) if isinstance(summary, dict) else None
        if isinstance(value, float):
            parts.append(f"{key}={100 * value:.1f}%" if "accuracy" in key else f"{key}={value}")
        elif value is not None:
            parts.append(f"{key}={value}")
    return " ".join(parts)
