"""SIGINT / SIGTERM during a run: stop cleanly, keep what is done, say how to resume.

The first Ctrl-C finishes the current batch then stops; a second Ctrl-C, or SIGTERM (what
torchrun and schedulers send), abandons the current batch at once (it is redone on
resume). Either way :class:`RunInterrupted` is raised (exit code 130 for SIGINT, 143 for
SIGTERM) with the command that resumes the run.

Example:
    >>> from invkit.pipeline.plan import plan_batches
    >>> plan = plan_batches(num_classes=10, batch_size=4, images_per_class=1)
    >>> stop = StopSignal()
    >>> with stop.installed():
    ...     for batch in plan:
    ...         if stop.requested:
    ...             break
    >>> stop.requested
    False
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence

from invkit.distributed import dist_env
from invkit.errors import InvkitError


class RunInterrupted(InvkitError):
    """A run stopped by SIGINT/SIGTERM; completed batches are saved and ``--resume`` continues.

    ``exit_code`` is 128 + the signal number (130 for Ctrl-C), as shells expect.
    """

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)



class Abandon(BaseException):
    """Raised inside the batch loop to stop now (BaseException: no ``except Exception`` eats it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignal:
    """SIGINT: stop after the current batch (twice: now). SIGTERM: stop now."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        again = self.signum is not None
        self.signum = self.signum or signum
        if signum == signal.SIGTERM or again:
            raise Abandon(self.signum)
        if dist_env().is_main:
            print("\nStopping after the current batch (Ctrl-C again to stop now; "
                  "the batch is then redone on --resume).", file=sys.stderr, flush=True)

    def installed(self):
        return _Handlers(self)


class _Handlers:
    def __init__(self, stop: StopSignal):
        self.stop = stop
        self.previous: dict = {}

    def __enter__(self):
        # Signal handlers can only be set from the main thread; elsewhere Ctrl-C
        # arrives as KeyboardInterrupt, which is handled the same way.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.stop._handle)
        return self.stop

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


def interrupted(out: str, done: int, total: int, signum: int) -> RunInterrupted:
    """The error that ends an interrupted run: what is complete and the resume command."""
    name = signal.Signals(signum).name
    return RunInterrupted(
        f"interrupted by {name}: {done} of {total} batches are complete in "
        f"{out!r}; to continue, run the same command with --resume: {resume_command()}",
        signum,
    )


def resume_command(argv: Sequence[str] | None = None) -> str:
    """This process's command line with ``--resume`` added (and ``--overwrite`` removed).

    Example:
        >>> resume_command(["invkit", "run", "deepinversion", "--overwrite"])
        'invkit run deepinversion --resume'
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "<your command> --resume"
    env = dist_env()
    program = os.path.basename(argv[0])
    as_module = program in ("__main__.py", "-m", "-c") or program.startswith("python")
    args = [a for a in argv[1:] if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    if not env.distributed:
        words = ["python -m invkit" if as_module else program]
    else:
        # torchrun runs a script file (the console script's full path) or "-m invkit".
        local = os.environ.get("LOCAL_WORLD_SIZE", str(env.world_size))
        launcher = (f"torchrun --nproc-per-node {local}" if local == str(env.world_size)
                    else "torchrun <your torchrun options>")
        words = [launcher, "-m invkit" if as_module else shlex.quote(argv[0])]
    return " ".join([*words, *map(shlex.quote, args)])
