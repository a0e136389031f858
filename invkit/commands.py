"""Built-in top-level commands contributed through the ``invkit_commands`` hook:
``invkit eval`` (how recognisable generated images are), ``invkit distill``
(data-free knowledge distillation on them), ``invkit prune`` (data-free channel
pruning, :mod:`invkit.prune`) and ``invkit extend`` (data-free continual learning: new
classes added to a network, its old ones kept by replaying generated images).

Example::

    invkit eval generations/digits --verifier-arch digits-verifier
    invkit distill --teacher digits --student digits-verifier --data generations/digits \\
        --test-data digits --epochs 30 --no-flip --output students/digits
    invkit prune --teacher digits --data generations/digits --target-macs 0.5 \\
        --test-data digits -o pruned/digits-50
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from invkit.cli.options import FiniteFloat, OutputDir, teacher_options
from invkit.hookspecs import hookimpl


def _load(spec: str | None, arch: str | None = None, weights: str | None = None,
          trust_checkpoint: bool = False, device: str = "cpu"):
    from invkit.teachers import load_teacher

    return load_teacher(spec, arch=arch, weights=weights, trust_checkpoint=trust_checkpoint,
                        device=device)


@click.command("eval")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--verifier-arch", "--verifier_arch", "verifier", required=True, metavar="SPEC",
              help="The classifier that judges the images: any teacher spec "
                   "(a registered name, torchvision:NAME, checkpoint:PATH).")
@click.option("--verifier-weights", default=None, metavar="WEIGHTS",
              help="Weights for the verifier (default: the spec's own).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full unpickling of a checkpoint file (only for files you trust).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Images per forward pass.")
@click.option("--device", default="cpu", show_default=True,
              help="Where the verifier runs (cpu, cuda, cuda:1, ...).")
@click.option("--num-workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Processes decoding images in parallel (0: decode in this one).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary line.")
def eval_command(directory, verifier, verifier_weights, trust_checkpoint, batch_size, device,
                 num_workers, quiet):
    """Accuracy of a verifier on the generated images in DIRECTORY.

    The result is kept in DIRECTORY/eval.json under the verifier's spec, beside those
    of other verifiers (the same verifier again replaces its own). Images stream from
    disk, batch by batch.

    \b
    Example:
      invkit eval generations/digits --verifier-arch digits-verifier
    """
    from invkit.data import find_layout
    from invkit.distributed import local_device
    from invkit.evaluate import evaluate_dir, per_class_table

    device = local_device(device)
    find_layout(directory)  # a missing or empty directory fails before loading a network
    _writable(directory, "eval.json")
    network = _load(verifier, weights=verifier_weights, trust_checkpoint=trust_checkpoint,
                    device=device)
    key = verifier if verifier_weights is None else f"{verifier} weights={verifier_weights}"
    with _write_errors(directory):
        report = evaluate_dir(directory, network, batch_size=batch_size, key=key,
                              num_workers=num_workers)
    if not quiet:
        from rich.console import Console

        Console().print(per_class_table(report, title=f"{network.name} on {directory}"))
    top5 = f", top-5 {100 * report['top5']:.2f}%" if "top5" in report else ""
    click.echo(f"{network.name}: top-1 {100 * report['top1']:.2f}%{top5} on {report['images']} "
               f"images (recorded under {key!r} in {directory / 'eval.json'})")


@click.command("distill")
@teacher_options
@click.option("--student", required=True, metavar="SPEC",
              help="The student architecture: any teacher spec (trained from scratch).")
@click.option("--student-weights", default=None, metavar="WEIGHTS",
              help="Initial student weights ('none' = random initialisation) [default: "
                   "none; a checkpoint:PATH student, e.g. a pruned network, starts from "
                   "its file's weights].")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Generated images (ImageFolder or shard dir); repeat to combine several.")
@click.option("--test-data", default=None, metavar="DIR|digits",
              help="Real images to evaluate on after every epoch: an ImageFolder, or 'digits' "
                   "(the held-out digits split).")
@click.option("--output", "-o", type=OutputDir(), default=None,
              help="Where to write student.safetensors and distill.json "
                   "[default: students/<student>-from-<teacher>].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory's files.")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1),
              help="Passes over the generated images.")
@click.option("--batch-size", "--bs", default=64, show_default=True, type=click.IntRange(min=1),
              help="Training batch size.")
@click.option("--lr", default=None, type=FiniteFloat(positive=True),
              help="Peak learning rate, cosine-decayed to 0 [default: 0.05 sgd, 0.001 adam].")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True,
              help="SGD with Nesterov momentum, or Adam.")
@click.option("--weight-decay", default=5e-4, show_default=True, type=FiniteFloat(minimum=0),
              help="L2 weight decay of the student.")
@click.option("--temperature", "-T", default=4.0, show_default=True,
              type=FiniteFloat(positive=True),
              help="Softmax temperature of the KD loss (the loss is scaled by T^2).")
@click.option("--padding", default=None, type=click.IntRange(min=0),
              help="Random-crop padding in pixels [default: input size / 8].")
@click.option("--flip/--no-flip", default=None,
              help="Random horizontal flips [default: on, off for the digits teachers, "
                   "since digits are not mirror-invariant].")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of initialisation, shuffling and augmentation.")
@click.option("--device", default="cpu", show_default=True,
              help="Where training runs (cpu, cuda, cuda:1, ...).")
@click.option("--num-workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Processes decoding images in parallel (0: decode in this one); the "
                   "images stream from disk either way.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar: one plain line per epoch.")
def distill_command(teacher, arch, weights, trust_checkpoint, student, student_weights, data,
                    test_data, output, overwrite, epochs, batch_size, lr, optimizer,
                    weight_decay, temperature, padding, flip, seed, device, num_workers, quiet):
    """Train a student on generated images to match the teacher (knowledge distillation).

    \b
    Example:
      invkit distill --teacher digits --student digits-verifier \\
          --data generations/digits --test-data digits --no-flip
    """
    from invkit.data import GeneratedImages, load_test_data
    from invkit.distill import DistillConfig, distill, save_distilled
    from invkit.distributed import local_device
    from invkit.errors import InvkitError
    from invkit.lock import OutputLock
    from invkit.progress import ProgressDisplay

    if teacher is None and arch is None:
        raise InvkitError("no teacher given: pass --teacher SPEC (see 'invkit teachers list')")
    device = local_device(device)
    if flip is None:
        flip = not str(teacher or arch).startswith("digits")
    if lr is None:
        lr = 1e-3 if optimizer == "adam" else 0.05
    config = DistillConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                           weight_decay=weight_decay, temperature=temperature, padding=padding,
                           flip=flip, seed=seed, device=device, num_workers=num_workers)
    dataset = GeneratedImages(data)  # lists files and targets only: images stream per batch
    teacher_net = _load(teacher, arch=arch, weights=weights, trust_checkpoint=trust_checkpoint,
                        device=device)
    _seed_torch(seed)  # the student's random initialisation
    if student_weights is None and not student.startswith("checkpoint:"):
        student_weights = "none"
    student_net = _load(student, weights=student_weights, device=device)
    if output is None:
        output = Path("students") / f"{_slug(student_net.name)}-from-{_slug(teacher_net.name)}"
    test = None
    if test_data == "digits":
        test = load_test_data(test_data)
    elif test_data:  # checked (and listed) before any output is created
        test = GeneratedImages(test_data, size=student_net.meta.input_size)
    # One distillation per output directory at a time (a second is refused, naming this one).
    with OutputLock(output):
        with _write_errors(output):
            _prepare(output, overwrite)
        click.echo(f"distilling {teacher_net.name} -> {student_net.name} on {len(dataset)} "
                   f"images from {len(data)} dir(s), {epochs} epochs", err=True)
        with ProgressDisplay(quiet=quiet, accuracy_label="test") as progress:
            result = distill(teacher_net, student_net, dataset, config=config, test=test,
                             progress=progress)
        with _write_errors(output):
            path = save_distilled(result, output, teacher_net,
                                  extra={"data": [str(d) for d in data], "images": len(dataset),
                                         "test_data": test_data})
    line = f"student saved to {path} (use it as --teacher checkpoint:{path})"
    if result.final_test_acc is not None:
        line += (f"; test accuracy {100 * result.final_test_acc:.2f}% "
                 f"(teacher {100 * result.teacher_test_acc:.2f}%)")
    click.echo(line)


@click.command("prune")
@teacher_options
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Generated images (ImageFolder or shard dir) for the importance estimate "
                   "and the fine-tuning; repeat to combine several.")
@click.option("--target-macs", type=FiniteFloat(), default=None, metavar="FRACTION",
              help="Keep this fraction of the teacher's MACs (multiply-accumulates per "
                   "image), e.g. 0.5. Give this or --amount.")
@click.option("--amount", type=FiniteFloat(), default=None, metavar="FRACTION",
              help="Remove this fraction of every prunable layer's channels, e.g. 0.3.")
@click.option("--importance", type=click.Choice(["taylor-kl", "magnitude"]),
              default="taylor-kl", show_default=True,
              help="Which channels go: taylor-kl (label-free Taylor estimate of the KL to "
                   "the teacher, on the images) or magnitude (L2 norm of the weights).")
@click.option("--steps", default=4, show_default=True, type=click.IntRange(min=1),
              help="Pruning steps (equal steps of MACs); the importance is re-estimated "
                   "at each, after --step-epochs of distillation. Without any distillation "
                   "use 1: re-estimating on an unrepaired network ranks worse.")
@click.option("--step-epochs", default=1, show_default=True, type=click.IntRange(min=0),
              help="Distillation epochs between steps.")
@click.option("--finetune-epochs", default=20, show_default=True, type=click.IntRange(min=0),
              help="Distillation epochs after the last step (0: none).")
@click.option("--test-data", default=None, metavar="DIR|digits",
              help="Real images for the accuracy before pruning, after it and after "
                   "fine-tuning: an ImageFolder, or 'digits' (the held-out digits split).")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Where to write pruned.safetensors and prune.json "
                   "[default: pruned/<teacher>-<importance>].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory's files.")
@click.option("--batch-size", "--bs", default=64, show_default=True, type=click.IntRange(min=1),
              help="Fine-tuning batch size.")
@click.option("--lr", default=0.01, show_default=True, type=FiniteFloat(positive=True),
              help="Peak fine-tuning learning rate (SGD, cosine-decayed).")
@click.option("--temperature", "-T", default=4.0, show_default=True,
              type=FiniteFloat(positive=True),
              help="Softmax temperature of the KD loss and of the Taylor-KL estimate.")
@click.option("--flip/--no-flip", default=None,
              help="Random horizontal flips while fine-tuning [default: on, off for the "
                   "digits teachers].")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the sampled classes, shuffling and augmentation.")
@click.option("--device", default="cpu", show_default=True,
              help="Where pruning and fine-tuning run (cpu, cuda, cuda:1, ...).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar: plain lines.")
def prune_command(teacher, arch, weights, trust_checkpoint, data, target_macs, amount,
                  importance, steps, step_epochs, finetune_epochs, test_data, output,
                  overwrite, batch_size, lr, temperature, flip, seed, device, quiet):
    """Remove whole channels of a teacher using generated images only (no real data).

    \b
    Channels are ranked by a label-free Taylor estimate of the change in KL divergence
    to the teacher (or by weight magnitude), removed in a few steps with torch-pruning
    (residual and concatenated channels stay consistent), and the network is then
    fine-tuned by distillation from the teacher on the same images. Writes
    OUTPUT/pruned.safetensors (use it as --teacher checkpoint:PATH) and OUTPUT/prune.json.
    Needs the prune extra: pip install 'invkit[prune]'.

    \b
    Example:
      invkit prune --teacher digits --data generations/digits --target-macs 0.5 \\
          --importance taylor-kl --finetune-epochs 20 --test-data digits -o pruned/digits-50
    """
    from invkit.data import load_image_dataset, load_test_data
    from invkit.distill import DistillConfig
    from invkit.errors import InvkitError
    from invkit.progress import ProgressDisplay

    if teacher is None and arch is None:
        raise InvkitError("no teacher given: pass --teacher SPEC (see 'invkit teachers list')")
    from invkit.prune import PruneConfig, check_data, prune, require_torch_pruning, save_pruned

    require_torch_pruning()
    if flip is None:
        flip = not str(teacher or arch).startswith("digits")
    finetune = DistillConfig(epochs=max(finetune_epochs, 1), batch_size=batch_size, lr=lr,
                             temperature=temperature, flip=flip, seed=seed, device=device)
    config = PruneConfig(target_macs=target_macs, amount=amount, importance=importance,
                         steps=steps, step_epochs=step_epochs, finetune_epochs=finetune_epochs,
                         finetune=finetune)
    images, targets = load_image_dataset(data)
    teacher_net = _load(teacher, arch=arch, weights=weights, trust_checkpoint=trust_checkpoint,
                        device=device)
    check_data(teacher_net, images, targets)
    test = load_test_data(test_data, size=teacher_net.meta.input_size) if test_data else None
    if output is None:
        output = Path("pruned") / f"{_slug(teacher_net.name)}-{importance}"
    _prepare(output, overwrite, names=("pruned.safetensors", "prune.json"), create=False)
    with ProgressDisplay(quiet=quiet) as progress:
        result = prune(teacher_net, images, targets, config=config, test=test, progress=progress)
    output.mkdir(parents=True, exist_ok=True)
    path = save_pruned(result, output, extra={"teacher": teacher_net.name,
                                              "data": [str(d) for d in data],
                                              "images": int(images.shape[0]),
                                              "test_data": test_data})
    line = (f"pruned network saved to {path} (use it as --teacher checkpoint:{path}); "
            f"MACs {100 * result.macs_after / result.macs_before:.1f}%, parameters "
            f"{100 * result.params_after / result.params_before:.1f}% of the teacher's")
    acc = result.accuracy
    if acc:
        parts = [f"{k} {100 * v:.2f}%" for k, v in acc.items() if v is not None]
        line += "; test accuracy " + ", ".join(parts)
    click.echo(line)


@click.command("extend")
@teacher_options
@click.option("--new-data", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Real images of the classes to add: an ImageFolder, one folder per new "
                   "class, named by class (the names go into the network's metadata).")
@click.option("--replay", "replay", multiple=True, metavar="DIR|none",
              help="Images generated from the teacher (e.g. by 'invkit run deepinversion'), "
                   "replayed with a KL term to keep the old classes; repeat to combine "
                   "several; 'none' for the LwF-only baseline. Required unless --no-distill.")
@click.option("--test-data", default=None, metavar="DIR|digits",
              help="Real test images of old and/or new classes (matched by class name), or "
                   "'digits' (the held-out digits split); evaluated after every epoch.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Where to write extended.safetensors and extend.json.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory's files.")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1),
              help="Passes over the new-class images.")
@click.option("--batch-size", "--bs", default=64, show_default=True, type=click.IntRange(min=1),
              help="New-class images per step.")
@click.option("--replay-batch-size", default=None, type=click.IntRange(min=1),
              help="Replay images per step [default: --batch-size].")
@click.option("--ce-weight", default=1.0, show_default=True, type=FiniteFloat(minimum=0),
              help="Weight of the cross-entropy (all classes) on the new-class images.")
@click.option("--replay-weight", default=1.0, show_default=True, type=FiniteFloat(minimum=0),
              help="Weight of T^2 KL(teacher || network's old classes) on the replay images.")
@click.option("--lwf-weight", default=1.0, show_default=True, type=FiniteFloat(minimum=0),
              help="Weight of the same KL on the new-class images (Learning without Forgetting).")
@click.option("--replay-softmax", type=click.Choice(["all", "old"]), default="all",
              show_default=True,
              help="The replay KL compares the teacher with the old classes' share of the "
                   "softmax over all classes (also pushes new classes off old images), or with "
                   "a softmax over the old logits alone.")
@click.option("--replay-ce-weight", default=0.0, show_default=True, type=FiniteFloat(minimum=0),
              help="Weight of a cross-entropy over all classes on the replay images, with the "
                   "teacher's predicted class as the label.")
@click.option("--new-ce", type=click.Choice(["all", "new"]), default="all", show_default=True,
              help="Cross-entropy on the new images over all classes, or over the new classes' "
                   "logits alone.")
@click.option("--backbone-lr-scale", default=1.0, show_default=True,
              type=FiniteFloat(minimum=0),
              help="Learning rate of every layer but the head, as a multiple of --lr "
                   "(0 freezes them, BatchNorm statistics included).")
@click.option("--head-ce-weight", default=0.0, show_default=True, type=FiniteFloat(minimum=0),
              help="Weight of a cross-entropy over all classes on the new and replay images "
                   "trained through the head alone (features detached; Always Be Dreaming's), "
                   "so the rest of the network is not taught to tell generated from real "
                   "images. Pair with --new-ce new --replay-softmax old.")
@click.option("--align-head/--no-align-head", default=False, show_default=True,
              help="Weight Aligning after training: scale the new classes' head rows so their "
                   "mean weight norm equals the old rows' (recorded in extend.json).")
@click.option("--no-distill", is_flag=True,
              help="Plain fine-tuning: cross-entropy on the new images only (forgets the old "
                   "classes; a baseline).")
@click.option("--temperature", "-T", default=1.0, show_default=True,
              type=FiniteFloat(positive=True),
              help="Softmax temperature of the KL terms (scaled by T^2).")
@click.option("--lr", default=None, type=FiniteFloat(positive=True),
              help="Peak learning rate, cosine-decayed to 0 [default: 0.003 sgd, 0.0003 adam].")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True,
              help="SGD with Nesterov momentum, or Adam.")
@click.option("--weight-decay", default=5e-4, show_default=True, type=FiniteFloat(minimum=0),
              help="L2 weight decay.")
@click.option("--padding", default=None, type=click.IntRange(min=0),
              help="Random-crop padding in pixels [default: input size / 8].")
@click.option("--flip/--no-flip", default=None,
              help="Random horizontal flips [default: on, off for digits teachers].")
@click.option("--head", default=None, metavar="NAME",
              help="The classification layer to widen (dotted name, e.g. fc or classifier.1) "
                   "[default: the last nn.Linear].")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the new head rows, shuffling and augmentation.")
@click.option("--device", default="cpu", show_default=True,
              help="Where training runs (cpu, cuda, cuda:1, ...).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar: plain lines per epoch.")
def extend_command(teacher, arch, weights, trust_checkpoint, new_data, replay, test_data, output,
                   overwrite, epochs, batch_size, replay_batch_size, ce_weight, replay_weight,
                   lwf_weight, replay_softmax, replay_ce_weight, new_ce, backbone_lr_scale,
                   head_ce_weight, align_head, no_distill, temperature,
                   lr, optimizer, weight_decay, padding, flip, head, seed, device, quiet):
    """Add new classes to a trained network without its old data (data-free continual
    learning): the teacher's head is widened to old + new classes and trained with
    cross-entropy on the new images, plus KL to the teacher's outputs on replay images
    generated from it and on the new images.

    \b
    Example:
      invkit run deepinversion --teacher checkpoint:old.safetensors --preset digits \\
          --images-per-class 200 --output generations/old
      invkit extend --teacher checkpoint:old.safetensors --new-data real/new \\
          --replay generations/old --test-data real/test --epochs 20 -o extended/
    """
    from invkit.distill import DistillConfig
    from invkit.errors import InvkitError
    from invkit.extend import (
        REPORT_FILE, WEIGHTS_FILE, ExtendConfig, combined_names, extend, load_extend_test,
        load_new_classes, load_replay, save_extended,
    )
    from invkit.progress import ProgressDisplay
    from invkit.teachers.heads import find_head

    if teacher is None and arch is None:
        raise InvkitError("no teacher given: pass --teacher SPEC (see 'invkit teachers list')")
    replay_dirs = _replay_dirs(replay, no_distill)
    if lr is None:
        lr = 3e-4 if optimizer == "adam" else 3e-3
    _prepare(output, overwrite, names=(WEIGHTS_FILE, REPORT_FILE), create=False)
    teacher_net = _load(teacher, arch=arch, weights=weights, trust_checkpoint=trust_checkpoint,
                        device=device)
    if flip is None:
        flip = teacher_net.meta.family != "digits"  # digits are not mirror-invariant
    config = ExtendConfig(
        training=DistillConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                               weight_decay=weight_decay, temperature=temperature,
                               padding=padding, flip=flip, seed=seed, device=device),
        ce_weight=ce_weight, replay_weight=replay_weight, lwf_weight=lwf_weight,
        distill=not no_distill, replay_batch_size=replay_batch_size, head=head,
        replay_softmax=replay_softmax, replay_ce_weight=replay_ce_weight, new_ce=new_ce,
        backbone_lr_scale=backbone_lr_scale, head_ce_weight=head_ce_weight,
        align_head=align_head)
    find_head(teacher_net.module, teacher_net.meta.num_classes, head)  # before any output
    new = load_new_classes(new_data, teacher_net)
    replay_images = load_replay(replay_dirs, teacher_net) if replay_dirs else None
    names = combined_names(teacher_net, new)
    test = (load_extend_test(test_data, names, size=teacher_net.meta.input_size)
            if test_data else None)
    _prepare(output, overwrite, names=(WEIGHTS_FILE, REPORT_FILE))
    _seed_torch(seed)  # the new head rows' initialisation
    replayed = f", {replay_images.shape[0]} replay images" if replay_images is not None else ""
    click.echo(f"extending {teacher_net.name} ({teacher_net.meta.num_classes} classes) by "
               f"{len(new.names)}: {', '.join(new.names)} ({new.images.shape[0]} images"
               f"{replayed}), {epochs} epochs", err=True)
    with ProgressDisplay(quiet=quiet) as progress:
        result = extend(teacher_net, new, replay_images, config=config, test=test,
                        progress=progress)
    path = save_extended(result, output, teacher_net, extra={
        "new_data": str(new_data), "replay": [str(d) for d in replay_dirs] or None,
        "new_images": int(new.images.shape[0]),
        "replay_images": int(replay_images.shape[0]) if replay_images is not None else 0,
        "test_data": test_data})
    line = f"extended network saved to {path} (use it as --teacher checkpoint:{path})"
    final = result.final
    if final.get("test_acc") is not None:
        parts = [f"{label} {100 * final[k]:.2f}%" for label, k in
                 (("all", "test_acc"), ("old", "test_acc_old"), ("new", "test_acc_new"))
                 if final.get(k) is not None]
        line += "; test accuracy " + ", ".join(parts)
    click.echo(line)


def _replay_dirs(replay: tuple[str, ...], no_distill: bool) -> list[Path]:
    """The --replay directories ([] for 'none'), checked against --no-distill."""
    from invkit.errors import InvkitError

    if any(r.lower() == "none" for r in replay) and len(replay) > 1:
        raise InvkitError("--replay none cannot be combined with replay directories")
    dirs = [Path(r) for r in replay if r.lower() != "none"]
    if no_distill and dirs:
        raise InvkitError("--no-distill is plain fine-tuning on the new data only: drop "
                          "--replay (or pass --replay none)")
    if not replay and not no_distill:
        raise InvkitError("pass --replay DIR (images generated from the teacher) or "
                          "--replay none (the LwF-only baseline)")
    return dirs


def _seed_torch(seed: int) -> None:
    """Seed torch's global generator (the student's initialisation and dropout)."""
    import torch

    torch.manual_seed(seed)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or "model"


def _prepare(output: Path, overwrite: bool,
             names: tuple[str, ...] = ("student.safetensors", "distill.json"),
             create: bool = True) -> None:
    """Refuse to mix a new result into an old run directory unless --overwrite
    (``create=False``: check only, before any slow work)."""
    from invkit.errors import InvkitError

    if not str(output).strip():
        raise InvkitError("the output path is empty: pass --output DIR")
    if output.exists() and not output.is_dir():
        raise InvkitError(f"output path {str(output)!r} exists and is not a directory")
    taken = [name for name in names if (output / name).exists()]
    if taken and not overwrite:
        raise InvkitError(f"output directory {str(output)!r} already holds {taken[0]}; "
                          "pass --overwrite to replace it or choose another --output")
    if create:
        output.mkdir(parents=True, exist_ok=True)
        _writable(output, names[0])


def _writable(directory: Path, name: str) -> None:
    """Refuse, before any work, a directory where ``name`` cannot be written."""
    from invkit.errors import InvkitError
    from invkit.output import check_writable

    try:
        check_writable(directory)
    except OSError as error:
        raise InvkitError(f"cannot write {name} in {str(directory)!r}: "
                          f"{error.strerror or error}") from None


@contextlib.contextmanager
def _write_errors(directory: Path):
    """A failed write (disk full, read-only, permissions) as one line naming the place."""
    from invkit.errors import InvkitError

    try:
        yield
    except OSError as error:
        where = getattr(error, "filename", None) or directory
        raise InvkitError(f"cannot write to {str(where)!r}: {error.strerror or error}") \
            from None


@hookimpl
def invkit_commands(cli):
    """``invkit eval``, ``invkit distill``, ``invkit prune`` and ``invkit extend`` (see
    :mod:`invkit.evaluate`, :mod:`invkit.distill`, :mod:`invkit.prune`, :mod:`invkit.extend`)."""
    cli.add_command(eval_command)
    cli.add_command(distill_command)
    cli.add_command(prune_command)
    cli.add_command(extend_command)
