"""Crash-safe file writes: write a temporary file, flush it to disk, rename it into place.

A rename within one filesystem is atomic, so a reader (or a process restarted after a
kill) sees either the old file or the complete new one, never a torn write.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def fsync_path(path: Path) -> None:
    """Flush a file (or a directory entry list) to stable storage."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A sibling name no other writer uses (``.name.tmp-<pid>``)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync the result and rename it to ``path``."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_path(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically."""
    return atomic_write_bytes(path, json.dumps(payload, indent=1, sort_keys=True).encode())


def atomic_save_npy(path: Path, array: Any) -> Path:
    """``numpy.save`` to ``path`` atomically (the name is kept as given)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    return atomic_write(path, write)
