"""Run a resolved run: load the networks, build the method's generator, write the dataset.

Example:
    >>> from invkit.pipeline import RunRequest, resolve_run
    >>> from invkit_plugins.deepinversion import DIOptions
    >>> request = RunRequest(teacher="digits", images_per_class=1, bs=5, output="out/digits",
    ...                      quiet=True)
    >>> summary = execute(resolve_run(request, DIOptions(iterations=2)))
    >>> summary["num_images"]
    10
"""

from __future__ import annotations

import time

from invkit.errors import InvkitError
from invkit.pipeline.layout import GeneratedBatch
from invkit.pipeline.resolve import ResolvedRun
from invkit.pipeline.writer import generate_dataset


def execute(run: ResolvedRun, display=None) -> dict:
    """Generate the run's dataset (resuming or refusing as asked); returns run.json's summary.

    ``display`` is an :class:`invkit.progress.ProgressDisplay` (default: a quiet one when
    ``run.request.quiet``, else a live one; only rank 0 shows anything).
    """
    from invkit.distributed import init_distributed, is_main_process, local_device
    from invkit.progress import ProgressDisplay
    from invkit.verifiers import as_verifier

    request, identity = run.request, run.identity
    if request.threads is not None:
        import torch

        torch.set_num_threads(request.threads)
    device = local_device(run.info.device)
    init_distributed(device)
    teacher = load_network(identity.teacher, run, arch=identity.arch, weights=identity.weights,
                           trust=request.trust_checkpoint, device=device, salt=0)
    _check_loaded(run, teacher)
    verifier = student = None
    if identity.verifier:
        verifier = as_verifier(load_network(identity.verifier, run,
                                            weights=identity.verifier_weights,
                                            device=device, salt=1))
    if identity.student:
        student = load_network(identity.student, run, device=device, salt=2)
    generator = run.spec.factory(teacher, run.objective, config=run.config, student=student,
                                 verifier=verifier)
    display = display or ProgressDisplay(quiet=request.quiet, enabled=is_main_process())
    history = _History(run)
    try:
        with display:
            summary = generate_dataset(
                run.batches, _batch_generator(generator, teacher, run, display, history),
                run.output, config=identity.to_json(), info=run.info.to_json(),
                num_classes=teacher.meta.num_classes, class_names=teacher.meta.class_names,
                fmt=identity.format, shard_size=identity.shard_size, resume=request.resume,
                overwrite=request.overwrite, progress=display,
            )
    finally:
        history.close()
    if is_main_process():
        history.finish(display.log)
        # A method may leave files of its own in the run (e.g. a trained generator).
        save = getattr(generator, "save_artifacts", None)
        if save is not None:
            save(run.output)
    return summary


class _History:
    """This rank's loss history (``state/losses.rankN.csv``), opened once the run directory
    is prepared; rank 0 joins every rank's into ``losses.csv`` and draws ``losses.png``."""

    def __init__(self, run: ResolvedRun):
        from invkit.history import term_weights

        self.run = run
        self.weights = term_weights(run.objective)
        self.writer = None

    def for_batch(self, index: int):
        if self.writer is None:
            from invkit.distributed import dist_env
            from invkit.history import LossHistory

            out = self.run.output
            self.writer = LossHistory(
                out / "state" / f"losses.rank{dist_env().rank}.csv", self.weights,
                tensorboard=out / "tensorboard" if self.run.request.tensorboard else None)
        self.writer.start_batch(index)
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def finish(self, log) -> None:
        from invkit.history import merge, plot

        out = self.run.output
        parts = sorted((out / "state").glob("losses.rank*.csv"))
        if parts:
            merge(parts, out / "losses.csv")
            plot(out / "losses.csv", out / "losses.png", log=log)


def load_network(spec: str, run: ResolvedRun, *, arch: str | None = None,
                 weights: str | None = None, trust: bool = False, device: str = "cpu",
                 salt: int = 0):
    """Load a teacher spec; random initialisation (``--weights none``) is seeded from the
    run's seed (and ``salt``), so a run with random weights is reproducible."""
    import torch

    from invkit.teachers import load_teacher

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.identity.seed * 1009 + salt)
        return load_teacher(spec, arch=arch, weights=weights, trust_checkpoint=trust,
                            device=device)


def _check_loaded(run: ResolvedRun, teacher) -> None:
    got, want = teacher.meta, run.meta
    if (got.num_classes, got.input_size) != (want.num_classes, want.input_size):
        raise InvkitError(
            f"teacher {teacher.name!r} loaded with {got.num_classes} classes at "
            f"{got.input_size} px, but its description says {want.num_classes} classes at "
            f"{want.input_size} px: the weights do not match the named network")


def _batch_generator(generator, teacher, run: ResolvedRun, display, history: _History):
    """``generate(batch) -> GeneratedBatch`` for the writer: progress, loss history, grids."""
    from invkit.output import save_grid

    out, every, weights = run.output, run.info.save_every, history.weights

    def generate(batch) -> GeneratedBatch:
        stage = {"current": 0}
        rows = history.for_batch(batch.index)

        def callback(cp) -> None:
            if cp.stage != stage["current"]:
                stage["current"] = cp.stage
                extra = f" ({cp.description})" if cp.description else ""
                label = f"stage {cp.stage}/{cp.stages}{extra}" if cp.stages > 1 else "steps"
                display.start_task(label, cp.stage_iterations)
            display.advance()
            if cp.losses is not None:
                display.report(cp.losses, cp.verifier_accuracy, weights=weights)
                rows.append(batch=batch.index, stage=cp.stage, iteration=cp.iteration,
                            lr=cp.lr, losses=cp.losses, accuracy=cp.verifier_accuracy)
                due = cp.iteration % every == 0 or cp.iteration == cp.total_iterations
                if batch.index == 0 and cp.inputs is not None and due:
                    images01 = teacher.denormalize(cp.inputs.float()).clamp(0, 1)
                    save_grid(out / "progress" / f"iter_{cp.iteration:05d}.png", images01)

        started = time.perf_counter()
        result = generator.generate(list(batch.targets), seed=batch.seed, callback=callback)
        display.batch_summary(result.losses, result.verifier_accuracy,
                              teacher_accuracy=result.teacher_accuracy,
                              kept="the lowest-loss iterate" if "best_total" in result.losses
                              else "the last iterate")
        stats = {"seconds": time.perf_counter() - started, "stage_seconds": result.timings,
                 "its_per_s": result.its_per_s, "teacher_accuracy": result.teacher_accuracy}
        if result.verifier_pred is not None:
            stats["verifier_accuracy"] = result.verifier_accuracy
        return GeneratedBatch(
            images01=result.images01, targets=result.targets, teacher_pred=result.teacher_pred,
            teacher_conf=result.teacher_conf, verifier_pred=result.verifier_pred,
            losses=result.losses, stats=stats)

    return generate

