"""Use the officially released OFFSET masks as they are: find, validate, link or copy.

The release (Google Drive / the ``iLearn-Lab/MM25-OFFSET-SegmentationData`` dataset) uses
the official file names (``layouts.py``). Each needed mask is looked up in the released
folder by its path relative to the dataset root, else by file name (preferring a file
whose folder name matches); it is opened and checked, then linked or copied into place.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from ..data.images import ImageLoadError
from ..registry import Registry
from .writer import MaskFailure, MaskJob, MaskReport, read_mask

PLACERS: Registry[Callable[[Path, Path], None]] = Registry("mask placement")
"""How a released file is put in place: (source, destination) -> None."""


@PLACERS.register("symlink")
def _symlink(source: Path, destination: Path) -> None:
    destination.symlink_to(source.resolve())


@PLACERS.register("hardlink")
def _hardlink(source: Path, destination: Path) -> None:
    os.link(source, destination)


@PLACERS.register("copy")
def _copy(source: Path, destination: Path) -> None:
    shutil.copyfile(source, destination)


def index_files(folder: Path) -> dict[str, list[Path]]:
    """Every file under ``folder`` by file name."""
    index: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            index.setdefault(path.name, []).append(path)
    return index


def find_released(job: MaskJob, folder: Path, index: dict[str, list[Path]]) -> Path:
    """The released file for ``job``; ValueError says why none (or no single one) fits."""
    if job.relative is not None and (folder / job.relative).is_file():
        return folder / job.relative
    candidates = index.get(job.mask_path.name, [])
    if len(candidates) > 1:
        candidates = [p for p in candidates if p.parent.name == job.mask_path.parent.name] or candidates
    if not candidates:
        raise ValueError(f"no released mask named {job.mask_path.name!r} under {folder}")
    if len(candidates) > 1:
        raise ValueError(f"{len(candidates)} released files named {job.mask_path.name!r} (e.g. {candidates[0]}, "
                         f"{candidates[1]}); arrange the release like the dataset folder")
    return candidates[0]


def import_released(
    jobs: Sequence[MaskJob], folder: str | Path, mode: str = "symlink", overwrite: bool = False, progress: bool = True
) -> MaskReport:
    """Validate the released mask of every job and link/copy it to ``job.mask_path``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"released masks folder not found: {folder}")
    place = PLACERS.get(mode)
    index = index_files(folder)
    report = MaskReport()
    for job in tqdm(jobs, desc="released masks", unit="mask", disable=not progress or None):
        if job.mask_path.is_file() and not overwrite:
            report.skipped += 1
            continue
        try:
            source = find_released(job, folder, index)
            read_mask(source)
        except (ValueError, ImageLoadError) as err:
            report.failures.append(MaskFailure(job.record.image_id, job.mask_path, str(err)))
            continue
        if source.resolve() == job.mask_path.resolve():
            report.skipped += 1  # the release already sits in the dataset folder
            continue
        job.mask_path.parent.mkdir(parents=True, exist_ok=True)
        if job.mask_path.is_symlink() or job.mask_path.exists():
            job.mask_path.unlink()
        place(source, job.mask_path)
        report.written += 1
    return report
