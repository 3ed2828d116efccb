"""Catalogues to index: an image folder, or a ``manifest.csv`` listing images.

Folder: every image file under the folder (recursively, sorted); the id is the path
relative to the folder without its extension (``shoes/red_01``).

CSV: a header row with a ``path`` column (relative paths are resolved against the CSV's
folder), an optional ``image_id`` column (``id`` is accepted too; default: derived from
the path as for folders), an
optional ``mask_path`` column (methods that need masks), and any other columns, which
are kept as string metadata and returned with search results.

Bad files: with ``on_error="skip"`` (the default) files that cannot be images of the
catalogue (a broken or looping symlink, a CSV row whose file is missing) are left out and
listed in ``Catalogue.skipped``; files that fail to decode are found while encoding and
listed the same way by ``indexing``. With ``on_error="fail"`` the first one stops the run.
"""
from __future__ import annotations

import csv
import errno
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..data.types import CIRDataset, ImageRecord

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MAX_ID_LENGTH = 512
RESERVED_COLUMNS = ("image_id", "id", "path", "mask_path")
ID_COLUMNS = ("image_id", "id")
"""Column names of the image id, ``image_id`` first (the name used everywhere else)."""
ON_ERROR = ("skip", "fail")
OnError = Literal["skip", "fail"]


@dataclass(frozen=True)
class SkippedImage:
    """A catalogue image that was not indexed, and why (``reason`` is a short code:
    missing, empty, not_an_image, corrupt, too_large, unreadable, symlink_loop, broken_symlink)."""

    path: str
    reason: str
    message: str
    image_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    return on_error


@dataclass(frozen=True)
class CatalogueEntry:
    """One image of a catalogue."""

    image_id: str
    path: Path
    mask_path: Path | None = None
    metadata: dict[str, Any] | None = None


@dataclass
class Catalogue:
    """The images to index, in a stable order."""

    source: Path
    entries: list[CatalogueEntry] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def as_dataset(self) -> CIRDataset:
        """A triplet-less ``CIRDataset`` over these images, for ``encoding.features.encode_images``."""
        images = {e.image_id: ImageRecord(e.image_id, e.path, None, e.mask_path) for e in self.entries}
        return CIRDataset("catalogue", "index", self.source, [], images, list(images), None)


def check_image_id(image_id: str, where: str) -> str:
    """Ids are shown in URLs and JSON: non-empty, printable, at most MAX_ID_LENGTH chars."""
    if not image_id or len(image_id) > MAX_ID_LENGTH or not image_id.isprintable():
        raise ValueError(f"{where}: invalid image id {image_id!r} (1-{MAX_ID_LENGTH} printable characters)")
    return image_id


def id_from_path(relative: Path) -> str:
    """The default id of an image: its relative path, POSIX separators, no extension."""
    return relative.with_suffix("").as_posix()


def _add(entries: dict[str, CatalogueEntry], entry: CatalogueEntry, where: str) -> None:
    previous = entries.get(entry.image_id)
    if previous is not None:
        raise ValueError(f"{where}: image id {entry.image_id!r} is used twice ({previous.path} and {entry.path})")
    entries[entry.image_id] = entry


def _symlink_problem(path: Path) -> SkippedImage | None:
    """Why ``path`` (a symlink) cannot be read, or None when it leads to a file."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return SkippedImage(str(path), "symlink_loop", f"cannot read image {path}: the symlink loops")
        return SkippedImage(str(path), "broken_symlink", f"cannot read image {path}: the symlink points to "
                                                          f"{os.readlink(path)!r}, which does not exist")
    return None


def _problem(skipped: list[SkippedImage], problem: SkippedImage, on_error: str) -> None:
    if on_error == "fail":
        raise FileNotFoundError(f"{problem.message} (--on-error skip indexes the other images and lists the bad ones)")
    skipped.append(problem)


def read_folder(folder: Path, on_error: OnError = "skip") -> Catalogue:
    """Every image under ``folder`` (sorted by relative path); symlinks that lead nowhere
    are skipped (listed in ``Catalogue.skipped``) or, with ``on_error="fail"``, refused."""
    check_on_error(on_error)
    entries: dict[str, CatalogueEntry] = {}
    skipped: list[SkippedImage] = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue  # hidden files and folders (e.g. .thumbnails)
        if path.is_symlink() and (problem := _symlink_problem(path)) is not None:
            _problem(skipped, problem, on_error)
            continue
        if not path.is_file():
            continue  # a folder named like an image
        image_id = check_image_id(id_from_path(relative), str(path))
        _add(entries, CatalogueEntry(image_id, path.resolve()), str(folder))
    if not entries and not skipped:
        raise ValueError(f"{folder} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return Catalogue(folder.resolve(), list(entries.values()), skipped)


def read_csv(manifest: Path, on_error: OnError = "skip") -> Catalogue:
    """The images listed in a CSV manifest (see the module docstring for the columns);
    rows whose image or mask file is missing are skipped or refused (``on_error``)."""
    check_on_error(on_error)
    base = manifest.parent.resolve()
    entries: dict[str, CatalogueEntry] = {}
    skipped: list[SkippedImage] = []
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{manifest}: the header must have a 'path' column, found {reader.fieldnames}")
        extra = [c for c in reader.fieldnames if c not in RESERVED_COLUMNS]
        id_columns = [c for c in ID_COLUMNS if c in reader.fieldnames]
        if len(id_columns) > 1:
            raise ValueError(f"{manifest}: the header has both 'image_id' and 'id' columns; keep one (image_id)")
        id_column = id_columns[0] if id_columns else "image_id"
        for line, row in enumerate(reader, start=2):
            where = f"{manifest}:{line}"
            raw = (row.get("path") or "").strip()
            if not raw:
                raise ValueError(f"{where}: empty path")
            path = Path(raw) if Path(raw).is_absolute() else base / raw
            image_id = (row.get(id_column) or "").strip() or id_from_path(Path(raw))
            if not path.is_file():
                problem = _symlink_problem(path) if path.is_symlink() else None
                _problem(skipped, SkippedImage(str(path), problem.reason if problem else "missing",
                                               f"{where}: {problem.message if problem else f'image not found: {path}'}",
                                               image_id), on_error)
                continue
            mask_raw = (row.get("mask_path") or "").strip()
            mask = None
            if mask_raw:
                mask = Path(mask_raw) if Path(mask_raw).is_absolute() else base / mask_raw
                if not mask.is_file():
                    _problem(skipped, SkippedImage(str(path), "missing", f"{where}: mask not found: {mask}", image_id),
                             on_error)
                    continue
            metadata = {c: row[c] for c in extra if row.get(c) not in (None, "")} or None
            _add(entries, CatalogueEntry(check_image_id(image_id, where), path.resolve(), mask, metadata), where)
    if not entries and not skipped:
        raise ValueError(f"{manifest} lists no images")
    return Catalogue(manifest.resolve(), list(entries.values()), skipped)


def read_catalogue(source: str | Path, on_error: OnError = "skip") -> Catalogue:
    """An image folder or a ``.csv`` manifest (``on_error``: see the module docstring)."""
    source = Path(source)
    if source.is_dir():
        return read_folder(source, on_error)
    if source.is_file() and source.suffix.lower() == ".csv":
        return read_csv(source, on_error)
    if not source.exists():
        raise FileNotFoundError(f"catalogue not found: {source} (give an image folder or a manifest .csv)")
    raise ValueError(f"{source} is neither an image folder nor a .csv manifest")
