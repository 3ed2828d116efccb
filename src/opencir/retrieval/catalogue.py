"""Catalogues to index: an image folder, or a ``manifest.csv`` listing images.

Folder: every image file under the folder (recursively, sorted); the id is the path
relative to the folder without its extension (``shoes/red_01``).

CSV: a header row with a ``path`` column (relative paths are resolved against the CSV's
folder), an optional ``id`` column (default: derived from the path as for folders), an
optional ``mask_path`` column (methods that need masks), and any other columns, which
are kept as string metadata and returned with search results.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.types import CIRDataset, ImageRecord

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MAX_ID_LENGTH = 512
RESERVED_COLUMNS = ("id", "path", "mask_path")


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


def read_folder(folder: Path) -> Catalogue:
    """Every image under ``folder`` (sorted by relative path)."""
    entries: dict[str, CatalogueEntry] = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue  # hidden files and folders (e.g. .thumbnails)
        image_id = check_image_id(id_from_path(relative), str(path))
        _add(entries, CatalogueEntry(image_id, path.resolve()), str(folder))
    if not entries:
        raise ValueError(f"{folder} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return Catalogue(folder.resolve(), list(entries.values()))


def read_csv(manifest: Path) -> Catalogue:
    """The images listed in a CSV manifest (see the module docstring for the columns)."""
    base = manifest.parent.resolve()
    entries: dict[str, CatalogueEntry] = {}
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{manifest}: the header must have a 'path' column, found {reader.fieldnames}")
        extra = [c for c in reader.fieldnames if c not in RESERVED_COLUMNS]
        for line, row in enumerate(reader, start=2):
            where = f"{manifest}:{line}"
            raw = (row.get("path") or "").strip()
            if not raw:
                raise ValueError(f"{where}: empty path")
            path = Path(raw) if Path(raw).is_absolute() else base / raw
            if not path.is_file():
                raise FileNotFoundError(f"{where}: image not found: {path}")
            mask_raw = (row.get("mask_path") or "").strip()
            mask = None
            if mask_raw:
                mask = Path(mask_raw) if Path(mask_raw).is_absolute() else base / mask_raw
                if not mask.is_file():
                    raise FileNotFoundError(f"{where}: mask not found: {mask}")
            image_id = (row.get("id") or "").strip() or id_from_path(Path(raw))
            metadata = {c: row[c] for c in extra if row.get(c) not in (None, "")} or None
            _add(entries, CatalogueEntry(check_image_id(image_id, where), path.resolve(), mask, metadata), where)
    if not entries:
        raise ValueError(f"{manifest} lists no images")
    return Catalogue(manifest.resolve(), list(entries.values()))


def read_catalogue(source: str | Path) -> Catalogue:
    """An image folder or a ``.csv`` manifest."""
    source = Path(source)
    if source.is_dir():
        return read_folder(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return read_csv(source)
    if not source.exists():
        raise FileNotFoundError(f"catalogue not found: {source} (give an image folder or a manifest .csv)")
    raise ValueError(f"{source} is neither an image folder nor a .csv manifest")
