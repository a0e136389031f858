"""OutputLock: the holder record written into the lock file (exact keys and values), the
exact refusals (a second taker, a file in the way, an unlockable or unwritable directory,
a lock file that keeps being replaced), and release removing the file."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import sys

import pytest

from invkit import lock as lock_module
from invkit.errors import InvkitError
from invkit.lock import LOCK_NAME, OutputLock, _read_holder
from tests.expect import invkit_error


def test_an_empty_path_is_refused():
    for path in ("", "   "):
        assert invkit_error(OutputLock, path) == "the output path is empty: pass --output DIR"


def test_the_command_defaults_to_the_program_name_and_its_arguments(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/invkit", "run", "deepinversion"])
    assert OutputLock(tmp_path).command == "invkit run deepinversion"
    assert OutputLock(tmp_path, command="given  cmd").command == "given  cmd"
    assert OutputLock(tmp_path, command="").command == ""
    monkeypatch.setattr(sys, "argv", [])
    assert OutputLock(tmp_path).command == "python"
    lock = OutputLock(str(tmp_path / "d"))
    assert lock.directory == tmp_path / "d" and lock.file == tmp_path / "d" / ".invkit.lock"
    assert LOCK_NAME == ".invkit.lock"


def test_the_holder_record_and_the_release(tmp_path):
    out = tmp_path / "a" / "b"
    lock = OutputLock(out, command="c" * 600)
    assert not lock.held
    old = os.umask(0)
    try:
        assert lock.acquire() is lock
    finally:
        os.umask(old)
    assert lock.held and out.is_dir()
    path = out / ".invkit.lock"
    assert path.stat().st_mode & 0o777 == 0o644
    text = path.read_text()
    assert text.endswith("}\n") and text.count("\n") == 1
    record = json.loads(text)
    assert list(record) == ["pid", "host", "command", "started"]
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["command"] == "c" * 500
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", record["started"])
    with pytest.raises(RuntimeError) as err:
        lock.acquire()
    assert str(err.value) == "OutputLock.acquire called twice"
    lock.release()
    assert not lock.held and not path.exists()
    lock.release()  # a no-op when not held
    with OutputLock(out, command="again") as again:
        assert again.held and json.loads(path.read_text())["command"] == "again"
    assert not again.held and not path.exists()


def test_a_second_taker_is_refused_naming_the_holder(tmp_path):
    first = OutputLock(tmp_path, command="invkit  run\n deepinversion").acquire()
    try:
        message = invkit_error(OutputLock(tmp_path, command="second").acquire)
        assert message == (
            f"output directory {str(tmp_path)!r} is in use by another invkit process (pid "
            f"{os.getpid()} on host {socket.gethostname()}: invkit run deepinversion); wait "
            "for it to finish, or choose another --output")
    finally:
        first.release()
    with OutputLock(tmp_path, command="third") as third:  # free again once released
        assert third.held


def test_a_lock_file_left_by_a_dead_holder_does_not_block(tmp_path):
    (tmp_path / ".invkit.lock").write_text('{"pid": 1, "host": "gone", "command": "x"}\n')
    with OutputLock(tmp_path, command="new") as lock:
        assert json.loads((tmp_path / ".invkit.lock").read_text())["command"] == "new"
        assert lock.held


@pytest.mark.parametrize("content, holder", [
    ('{"pid": 7, "host": "h", "command": "a   b\\tc"}', "pid 7 on host h: a b c"),
    ('{"pid": 7}', "pid 7 on host ?: ?"),
    ('{"pid": 7, "host": "h", "command": "' + "x" * 120 + '"}', "pid 7 on host h: " + "x" * 120),
    ('{"pid": 7, "host": "h", "command": "' + "x" * 121 + '"}',
     "pid 7 on host h: " + "x" * 117 + "..."),
    ('{"host": "h", "command": "c"}', "its details are not written yet"),
    ("", "its details are not written yet"),
    ('{"pid": 7, "hos', "its details are not written yet"),
    ("[1, 2]", "its details are not written yet"),
    ("\xff", "its details are not written yet"),
])
def test_the_holder_is_read_back_as_far_as_it_is_known(tmp_path, content, holder):
    path = tmp_path / "f"
    path.write_bytes(content.encode("latin-1") if content == "\xff" else content.encode())
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _read_holder(fd) == holder
    finally:
        os.close(fd)


def test_a_long_record_is_read_whole(tmp_path):
    path = tmp_path / "f"
    path.write_text(json.dumps({"pid": 3, "host": "h", "command": "\u2603" * 500}))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _read_holder(fd) == "pid 3 on host h: " + "\u2603" * 117 + "..."
    finally:
        os.close(fd)


def test_a_path_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    assert invkit_error(OutputLock(tmp_path / "f").acquire) == (
        f"output path {str(tmp_path / 'f')!r} exists and is not a directory")
    assert invkit_error(OutputLock(tmp_path / "f" / "sub").acquire) == (
        f"cannot create output directory {str(tmp_path / 'f' / 'sub')!r}: Not a directory")


def test_a_filesystem_without_flock_is_refused_and_the_file_closed(monkeypatch, tmp_path):
    closed = []
    real_close = os.close
    monkeypatch.setattr(os, "close", lambda fd: closed.append(fd) or real_close(fd))

    def no_locks(fd, op):
        assert op == fcntl.LOCK_EX | fcntl.LOCK_NB
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = OutputLock(tmp_path)
    assert invkit_error(lock.acquire) == (
        f"cannot lock output directory {str(tmp_path)!r}: No locks available")
    assert len(closed) == 1 and not lock.held
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: (_ for _ in ()).throw(OSError("odd")))
    assert invkit_error(lock.acquire) == f"cannot lock output directory {str(tmp_path)!r}: odd"


def test_a_busy_lock_closes_its_file(monkeypatch, tmp_path):
    first = OutputLock(tmp_path).acquire()
    closed = []
    real_close = os.close
    monkeypatch.setattr(os, "close", lambda fd: closed.append(fd) or real_close(fd))
    try:
        with pytest.raises(InvkitError):
            OutputLock(tmp_path).acquire()
        assert len(closed) == 1
    finally:
        monkeypatch.undo()
        first.release()


def test_an_unwritable_directory_is_refused(monkeypatch, tmp_path):
    def denied(path, flags, mode=0o777):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    assert invkit_error(OutputLock(tmp_path).acquire) == (
        f"cannot write to output directory {str(tmp_path)!r}: Permission denied")


def test_a_lock_file_that_keeps_being_replaced_is_given_up_after_ten_tries(monkeypatch,
                                                                           tmp_path):
    tries = []
    monkeypatch.setattr(lock_module, "_same_file",
                        lambda fd, path: tries.append(path) and False)
    lock = OutputLock(tmp_path)
    assert invkit_error(lock.acquire) == (f"cannot lock output directory {str(tmp_path)!r}: its "
                                      "lock file keeps being replaced")
    assert tries == [tmp_path / ".invkit.lock"] * 10 and not lock.held


def test_a_lock_file_removed_before_it_was_locked_is_opened_again(monkeypatch, tmp_path):
    answers = [False, True]
    real = lock_module._same_file
    monkeypatch.setattr(lock_module, "_same_file",
                        lambda fd, path: answers.pop(0) and real(fd, path))
    with OutputLock(tmp_path, command="retried") as lock:
        assert lock.held and not answers
        assert json.loads((tmp_path / ".invkit.lock").read_text())["command"] == "retried"


def test_same_file_compares_the_open_file_with_the_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("1")
    b.write_text("2")
    fd = os.open(a, os.O_RDONLY)
    try:
        assert lock_module._same_file(fd, a)
        assert not lock_module._same_file(fd, b)
        os.unlink(a)
        assert not lock_module._same_file(fd, a)
    finally:
        os.close(fd)


def test_a_longer_record_left_behind_is_overwritten_whole_and_the_file_closed(tmp_path):
    path = tmp_path / ".invkit.lock"
    path.write_text(json.dumps({"pid": 1, "host": "gone", "command": "x" * 2000}) + "\n")
    lock = OutputLock(tmp_path, command="short").acquire()
    fd = lock._fd
    assert json.loads(path.read_text())["command"] == "short"  # no tail of the old record
    lock.release()
    with pytest.raises(OSError):
        os.fstat(fd)  # released and closed
