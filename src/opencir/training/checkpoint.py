"""The ``last/`` checkpoint, written so that a kill or a full disk never loses the previous one.

``write_checkpoint`` puts the whole checkpoint (model directory + trainer state) into a
staging folder ``.last.new``, flushes it to disk, then swaps it in with two renames
(``last`` -> ``.last.old``, ``.last.new`` -> ``last``) and removes the old one. A folder
counts as a checkpoint only once its trainer state is in place, and the state is written
last, so at every instant one complete checkpoint exists under one of the three names;
``recover_checkpoint`` (called before resuming) puts the newest complete one back under
``last``.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from ..methods.base import CIRMethod
from ..methods.io import CONFIG_FILE, save_model

STATE_FILE = "trainer_state.pt"


def _siblings(directory: Path) -> tuple[Path, Path]:
    return directory.with_name(f".{directory.name}.new"), directory.with_name(f".{directory.name}.old")


def is_complete(directory: Path) -> bool:
    """A checkpoint folder with its model config and trainer state (the state is written last)."""
    return (directory / STATE_FILE).is_file() and (directory / CONFIG_FILE).is_file()


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_checkpoint(method: CIRMethod, directory: str | Path, state: Mapping[str, Any],
                     extra: Mapping[str, Any] | None = None, **save_options: Any) -> Path:
    """Write model + ``state`` as ``directory`` atomically; the previous one survives any failure.
    ``save_options`` go to ``save_model`` (``card``, ``backbone_store`` for a lean checkpoint)."""
    directory = Path(directory)
    staging, old = _siblings(directory)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save_model(method, staging, extra=extra, **save_options)
        tmp = staging / (STATE_FILE + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, staging / STATE_FILE)
        _fsync(staging)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        kept = f"the previous checkpoint {directory} is intact" if is_complete(directory) else "no previous checkpoint"
        reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        raise OSError(err.errno, f"could not write the checkpoint {directory} ({reason}); {kept}") from err
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(staging, directory)
    _fsync(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def recover_checkpoint(directory: str | Path) -> Path | None:
    """Make ``directory`` the newest complete checkpoint after a kill mid-write; None if there is none."""
    directory = Path(directory)
    staging, old = _siblings(directory)
    if not is_complete(directory):
        for candidate in (staging, old):  # staging is newer than old when both are complete
            if is_complete(candidate):
                shutil.rmtree(directory, ignore_errors=True)
                os.replace(candidate, directory)
                break
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    return directory if is_complete(directory) else None
