"""``invkit run METHOD``: one command per registered method, built by core.

The options every method shares are declared once here; a method adds its own typed
options (from its options dataclass, see :func:`invkit.methods.option`) and shorthand
flags for prior weights (:class:`invkit.specs.PriorFlag`). Flag names and the messages
that name them live here, not in the pipeline.

Example:
    >>> from click.testing import CliRunner
    >>> from invkit.registry import registry
    >>> command = method_command(registry("method").get("deepinversion"))
    >>> CliRunner().invoke(command, ["--teacher", "digits", "--dry-run"]).exit_code
    0
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from invkit.cli.options import FiniteFloat, OutputDir, prior_options, teacher_options
from invkit.errors import InvkitError
from invkit.methods import method_options
from invkit.specs import MethodSpec

FORMATS = ("png", "safetensors")


def _targets(ctx, param, value):
    if value is None:
        return None
    try:
        targets = tuple(int(t) for t in value.split(",") if t.strip())
        if not targets:
            raise ValueError
        return targets
    except ValueError:
        raise InvkitError(f"--targets {value!r} is not a comma-separated list of class "
                          "indices, e.g. 1,2,3") from None


def shared_options(command):
    """The options of ``invkit run`` that every method has (besides teacher and priors)."""
    decorators = [
        click.option("--bs", "--batch-size", "bs", type=click.IntRange(min=1), default=None,
                     help="Images per batch (default: the preset's)."),
        click.option("--targets", callback=_targets, default=None, metavar="I,J,...",
                     help="Target classes, cycled to fill each batch."),
        click.option("--random-label", "--random_label", "random_label", is_flag=True,
                     help="Random (seeded, class-balanced) targets instead of the preset's."),
        click.option("--num-batches", type=click.IntRange(min=1), default=None,
                     help="Number of batches to generate."),
        click.option("--images-per-class", type=click.IntRange(min=1), default=None,
                     help="Class-balanced plan with K images per class."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Run seed (also seeds random initial weights)."),
        click.option("--device", default=None,
                     help="cpu, cuda, cuda:N (default: cuda if available)."),
        click.option("--fp16", is_flag=True, help="float16 autocast with a gradient scaler."),
        click.option("--bf16", is_flag=True, help="bfloat16 autocast (also on CPU)."),
        click.option("--exp-name", "--exp_name", "exp_name", default=None,
                     help="Experiment name (default output: generations/<exp-name>)."),
        click.option("--output", "-o", type=OutputDir(), default=None, help="Output directory."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="png",
                     show_default=True, help="Image files or uint8 safetensors shards."),
        click.option("--shard-size", type=click.IntRange(min=1), default=1024,
                     show_default=True, help="Images per safetensors shard."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run in --output."),
        click.option("--overwrite", is_flag=True, help="Replace a previous run in --output."),
        click.option("--verifier", "use_verifier", is_flag=True,
                     help="Check images with the preset's verifier network."),
        click.option("--verifier-arch", "--verifier_arch", "verifier_arch", default=None,
                     metavar="SPEC", help="Verifier network (any teacher spec); implies "
                     "--verifier."),
        click.option("--verifier-weights", default=None, metavar="WEIGHTS",
                     help="Weights of the verifier (as --weights; default: the spec's own)."),
        click.option("--student", default=None, metavar="SPEC",
                     help="Student network for priors that need one (adi)."),
        click.option("--save-every", type=click.IntRange(min=1), default=100,
                     show_default=True, help="Every N iterations: losses read back, verifier "
                     "run, progress grid (progress/iter_NNNNN.png, first batch only)."),
        click.option("--quiet", "-q", is_flag=True, help="Plain progress lines (for logs)."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for torch (default: torch's own). On a busy or shared "
                          "CPU, fewer threads than cores avoids a collapse in throughput."),
        click.option("--tensorboard", is_flag=True,
                     help="Also log every checkpoint's losses to OUTPUT/tensorboard "
                          "(pip install 'invkit[tensorboard]')."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), command)


def method_command(spec: MethodSpec) -> click.Command:
    """The click command of ``invkit run NAME`` for a method record."""
    own = method_options(spec.options)
    flags = spec.prior_flags

    def callback(**values):
        run_from_cli(spec, values, [o.name for o in own], [f.name for f in flags])

    command = callback
    for opt in own:
        command = _click_option(opt)(command)
    for flag in flags:
        command = click.option(*(flag.flags or (f"--{flag.name.replace('_', '-')}",)),
                               flag.name, type=FiniteFloat(), default=None,
                               help=flag.help or _flag_help(flag))(command)
    if spec.presets:
        command = click.option(
            "--preset", type=click.Choice([p.name for p in spec.presets]), default=None,
            help="Defaults to start from (default: chosen from what the teacher is: its "
                 "dataset family, else its input size).")(command)
    command = teacher_options(prior_options(shared_options(command)))
    command = click.command(spec.name, help=_help(spec), short_help=spec.summary,
                            context_settings={"help_option_names": ["-h", "--help"]})(command)
    _check_unique(spec, command)
    return command


def _check_unique(spec: MethodSpec, command: click.Command) -> None:
    seen: dict[str, str] = {}
    for param in command.params:
        for decl in [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]:
            if decl in seen:
                raise InvkitError(f"method {spec.name!r} (from plugin {spec.provider!r}) "
                                  f"declares option {decl} that invkit run already has")
            seen[decl] = param.name


def _flag_help(flag) -> str:
    return (f"Sets option {flag.option} of prior {flag.prior}." if flag.option
            else f"Weight of prior {flag.prior} (0 drops it).")


def _help(spec: MethodSpec) -> str:
    return spec.summary + "."


def _click_option(opt):
    dashed = opt.name.replace("_", "-")
    help_text = opt.help + (f" [default: {opt.default}]" if opt.default is not None else "")
    if opt.type is bool:
        decls = opt.flags or (f"--{dashed}/--no-{dashed}",)
        flag = {} if any("/" in d for d in decls) else {"is_flag": True}
        return click.option(*decls, opt.name, default=opt.default, help=help_text, **flag)
    return click.option(*(opt.flags or (f"--{dashed}",)), opt.name, type=_click_type(opt),
                        default=opt.default, help=help_text, metavar=opt.metavar)


def _click_type(opt):
    if opt.choices:
        return click.Choice([str(c) for c in opt.choices]) if opt.type is str else \
            _Converted(click.Choice([str(c) for c in opt.choices]), opt.type)
    if opt.type is int:
        return click.IntRange(min=opt.min, max=opt.max)
    if opt.type is float:
        return FiniteFloat(minimum=opt.min, maximum=opt.max)
    return click.STRING


class _Converted(click.ParamType):
    """A choice given as text, converted to the option's type (e.g. --setting-id 0..2)."""

    def __init__(self, choice: click.Choice, to: type):
        self.choice, self.to, self.name = choice, to, choice.name

    def get_metavar(self, param, ctx=None):
        return self.choice.get_metavar(param, ctx) if ctx is not None else None

    def convert(self, value, param, ctx):
        return self.to(self.choice.convert(str(value), param, ctx))


# --------------------------------------------------------------------------- running


def run_from_cli(spec: MethodSpec, values: dict, option_names: list[str],
                 flag_names: list[str]) -> None:
    """Turn the command's values into a request and options, then resolve and run."""
    from invkit.pipeline import RunRequest, resolve_run

    if values["fp16"] and values["bf16"]:
        raise InvkitError("--fp16 and --bf16 cannot be used together: choose one")
    if values["num_batches"] is not None and values["images_per_class"] is not None:
        raise InvkitError("give --num-batches or --images-per-class, not both")
    if values["resume"] and values["overwrite"]:
        raise InvkitError("--overwrite and --resume cannot be used together: choose one")
    if values["tensorboard"]:
        from invkit.history import require_tensorboard

        require_tensorboard()
    options = spec.options(**{n: values[n] for n in option_names}) if spec.options else None
    request = RunRequest(
        method=spec.name, teacher=values["teacher"], arch=values["arch"],
        weights=values["weights"], trust_checkpoint=values["trust_checkpoint"],
        priors=tuple(values["prior"]), no_default_priors=values["no_default_priors"],
        prior_flags=tuple((n, values[n]) for n in flag_names if values[n] is not None),
        preset=values.get("preset"), bs=values["bs"], targets=values["targets"],
        random_label=values["random_label"], num_batches=values["num_batches"],
        images_per_class=values["images_per_class"], seed=values["seed"],
        device=values["device"],
        precision="fp16" if values["fp16"] else "bf16" if values["bf16"] else "fp32",
        output=None if values["output"] is None else str(values["output"]),
        exp_name=values["exp_name"], format=values["fmt"],
        shard_size=values["shard_size"], resume=values["resume"],
        overwrite=values["overwrite"], verifier=values["use_verifier"],
        verifier_arch=values["verifier_arch"], verifier_weights=values["verifier_weights"],
        student=values["student"], save_every=values["save_every"], quiet=values["quiet"],
        tensorboard=values["tensorboard"], threads=values["threads"],
    )
    run = resolve_run(request, options, spec=spec)
    if values["dry_run"]:
        for line in run.describe():
            click.echo(line)
        return
    from invkit.distributed import is_main_process, shutdown_distributed
    from invkit.pipeline.execute import execute

    summary = execute(run)
    if is_main_process():
        click.echo(summary_line(summary, run.output))
    shutdown_distributed()  # under torchrun this ends the process


def summary_line(summary: dict, out_dir: Path) -> str:
    """``wrote DIR: N images, teacher 100.0%, verifier 93.0%`` (the run's last line)."""
    parts = [f"{summary['num_images']} images"]
    for key, label in (("teacher_accuracy", "teacher"), ("verifier_accuracy", "verifier")):
        if isinstance(summary.get(key), float):
            parts.append(f"{label} {100 * summary[key]:.1f}%")
    return f"wrote {out_dir}: " + ", ".join(parts)
