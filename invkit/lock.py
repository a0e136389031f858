"""An exclusive lock on an output directory, so two runs never write into one directory.

The lock is ``fcntl.flock`` on ``<dir>/.invkit.lock``, a small JSON file naming the
holder (pid, host, command, start time). The kernel releases a flock when its holder
dies, however it dies (SIGKILL included), so a lock file left by a dead process never
blocks anyone: the next taker simply locks it again. A second live taker gets an
:class:`~invkit.errors.InvkitError` naming the holder's pid, host and command.

Take it before deciding anything about the directory's contents (``--overwrite``,
``--resume``) and hold it for the whole run; under torchrun only rank 0 takes it.

Example:
    >>> from invkit.output import prepare_output_dir
    >>> with OutputLock("generations/digits"):
    ...     out = prepare_output_dir("generations/digits", overwrite=True)
    ...     # generate into out; a second invkit on this directory is refused meanwhile
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from invkit.errors import InvkitError

#: The lock file's name inside the output directory (never counted as run content).
LOCK_NAME = ".invkit.lock"
# The holder record is read back with one pread of HOLDER_READ_BYTES; the command in it is
# cut to HOLDER_COMMAND_CHARS (at most 6 bytes each once JSON-escaped) so it always fits.
HOLDER_READ_BYTES = 4096
HOLDER_COMMAND_CHARS = 500


class OutputLock:
    """Exclusive, non-blocking lock on directory ``path`` (created if missing).

    ``acquire()`` (or ``with``) raises :class:`InvkitError` at once if another live
    process holds the lock. Releasing removes the lock file. Not re-entrant: one
    ``OutputLock`` per run.

    Example:
        >>> lock = OutputLock("out").acquire()
        >>> OutputLock("out").acquire()
        Traceback (most recent call last):
        invkit.errors.InvkitError: output directory 'out' is in use by another invkit
        process (pid ... on host ...: ...); wait for it to finish, or choose another
        --output
        >>> lock.release()
    """

    def __init__(self, path: str | os.PathLike, command: str | None = None):
        if not str(path).strip():
            raise InvkitError("the output path is empty: pass --output DIR")
        self.directory = Path(path)
        self.file = self.directory / LOCK_NAME
        self.command = command if command is not None else " ".join(
            [Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        """Take the lock (creating the directory), or raise naming the holder."""
        import fcntl

        if self._fd is not None:
            raise RuntimeError("OutputLock.acquire called twice")
        if self.directory.exists() and not self.directory.is_dir():
            raise InvkitError(f"output path {str(self.directory)!r} exists and is not a "
                              "directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InvkitError(f"cannot create output directory {str(self.directory)!r}: "
                              f"{error.strerror or error}") from None
        for _ in range(10):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise InvkitError(
                    f"output directory {str(self.directory)!r} is in use by another invkit "
                    f"process ({holder}); wait for it to finish, or choose another "
                    "--output") from None
            except OSError as error:  # e.g. a filesystem without flock support
                os.close(fd)
                raise InvkitError(f"cannot lock output directory {str(self.directory)!r}: "
                                  f"{error.strerror or error}") from None
            # The holder we waited on may have removed the file just before we locked
            # it; a lock on a removed file protects nothing, so open the new one again.
            if _same_file(fd, self.file):
                self._fd = fd
                self._write_holder(fd)
                return self
            os.close(fd)
        raise InvkitError(f"cannot lock output directory {str(self.directory)!r}: its lock "
                          "file keeps being replaced")

    def release(self) -> None:
        """Remove the lock file and release the lock (a no-op when not held)."""
        import fcntl

        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Unlink while still holding the lock: a waiter that opened the old file
        # notices (see acquire) and retries on a fresh one.
        with contextlib.suppress(OSError):
            os.unlink(self.file)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _open(self) -> int:
        try:
            return os.open(self.file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                           0o644)
        except OSError as error:
            raise InvkitError(f"cannot write to output directory {str(self.directory)!r}: "
                              f"{error.strerror or error}") from None

    def _write_holder(self, fd: int) -> None:
        # The command is cut so the record stays within what _read_holder reads: a long
        # command line (thousands of arguments) made the holder unreadable.
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "command": self.command[:HOLDER_COMMAND_CHARS],
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        data = (json.dumps(record) + "\n").encode("utf-8")
        with contextlib.suppress(OSError):  # the lock itself is what matters
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_holder(fd: int) -> str:
    """``pid N on host H: COMMAND`` from the lock file (what is known of it)."""
    try:
        record = json.loads(os.pread(fd, HOLDER_READ_BYTES, 0).decode("utf-8"))
        command = " ".join(str(record.get("command", "?")).split())
        if len(command) > 120:
            command = command[:117] + "..."
        return f"pid {record['pid']} on host {record.get('host', '?')}: {command}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "its details are not written yet"


__all__ = ["LOCK_NAME", "OutputLock"]
