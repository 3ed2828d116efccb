"""The writer lock of an index directory: one writing process (or request) at a time.

Portable (``filelock``: ``flock`` on POSIX, ``msvcrt`` locking on Windows). The lock is
released by the operating system when its holder dies, so a killed writer never leaves
the index locked. Whoever holds it records its pid, host, command and start time in
``.lock.owner.json`` so that a refused writer can say who is writing.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import IndexBusyError

LOCK = ".lock"
OWNER = ".lock.owner.json"


def _describe_owner(directory: Path) -> str:
    try:
        owner = json.loads((directory / OWNER).read_text())
    except (OSError, ValueError):
        return "another process"
    return (f"process {owner.get('pid')} on {owner.get('host')} ({owner.get('command')!r}, "
            f"writing since {owner.get('since')})")


class WriterLock:
    """A held writer lock; ``release()`` (or leaving the ``with`` block) frees it."""

    def __init__(self, directory: Path, lock: FileLock) -> None:
        self.directory, self._lock = directory, lock

    def release(self) -> None:
        if self._lock.is_locked:
            try:
                (self.directory / OWNER).unlink()
            except OSError:
                pass
            self._lock.release()

    def __enter__(self) -> "WriterLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_writer_lock(directory: str | Path, timeout: float = 0.0) -> WriterLock:
    """Take the writer lock of ``directory`` (created if needed), waiting at most
    ``timeout`` seconds; IndexBusyError names the holder when it is taken."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK), thread_local=False)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise IndexBusyError(
            f"{directory} is being written by {_describe_owner(directory)}; wait for it to finish "
            "(two writers on one index are never interleaved)"
        ) from None
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:3]) or "python",
             "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        (directory / OWNER).write_text(json.dumps(owner))
    except OSError:  # the lock itself is what protects the index; the note is informational
        pass
    return WriterLock(directory, lock)


def release_writer_lock(lock: WriterLock) -> None:
    """Free a lock taken by ``acquire_writer_lock``."""
    lock.release()


def processes_holding(path: str | Path) -> list[str]:
    """``"<pid> (<command line>)"`` of the processes that have ``path`` open, where the
    operating system tells (Linux ``/proc``); an empty list elsewhere or when unknown."""
    target = str(Path(path).resolve())
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (entry / "fd").iterdir()):
                command = " ".join((entry / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
                found.append(f"{entry.name} ({command[:120]})")
        except OSError:  # gone, or not ours to inspect
            continue
    return found


def is_locked_elsewhere(path: str | Path) -> bool:
    """Whether another process holds an OS lock on the existing file ``path`` (probed
    without removing the file)."""
    if not Path(path).is_file():
        return False
    probe = FileLock(str(path), thread_local=False, preserve_lock_file=True)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False
