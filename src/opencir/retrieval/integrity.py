"""Checksums of the files of an index generation, recorded at commit and verified on open.

The manifest records ``files``: ``{path relative to the index root: {"size", "sha256"}}``
for every file the generation uses (records, vector segments, stored reference features,
backend state such as the FAISS index file) and ``checksum``, a SHA-256 of the manifest
itself. Opening an index (the fast path) checks the manifest's checksum, that every file
exists with its recorded size, and the full hash of every file up to
``HASH_ON_OPEN_BYTES``; ``verify_files(..., full=True)`` (``opencir index --verify``)
hashes every file. A mismatch raises IndexDamagedError naming the file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..hashing import file_record, file_sha256
from .errors import IndexDamagedError

HASH_ON_OPEN_BYTES = 16 * 1024 * 1024
_CHUNK = 1 << 20


def file_entry(path: Path) -> dict[str, Any]:
    """The ``{"size", "sha256"}`` record of a file just written."""
    return file_record(path, _CHUNK)


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's content without its own ``checksum`` field."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def check_manifest(manifest: Mapping[str, Any], path: Path) -> None:
    """IndexDamagedError when the manifest's recorded checksum does not match its content."""
    recorded = manifest.get("checksum")
    if recorded is not None and recorded != manifest_checksum(manifest):
        raise IndexDamagedError(f"{path} is damaged: its content does not match its checksum; "
                                "restore the index directory from a backup or rebuild it")


def verify_files(root: Path, files: Mapping[str, Mapping[str, Any]], full: bool = False,
                 only: Iterable[str] | None = None) -> list[str]:
    """Check each recorded file (``only`` those, when given): existence and size always, the
    SHA-256 when ``full`` or the file is small. Returns the paths whose hash was checked."""
    hashed = []
    for name in (only if only is not None else sorted(files)):
        entry = files.get(name)
        if entry is None:
            continue
        path = root / name
        advice = "restore the index directory from a backup or rebuild it (`opencir index` into a new directory)"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IndexDamagedError(f"index file {path} is missing; {advice}") from None
        if size != entry["size"]:
            raise IndexDamagedError(f"index file {path} is damaged: {size} bytes, {entry['size']} recorded at commit; {advice}")
        if full or size <= HASH_ON_OPEN_BYTES:
            found = file_sha256(path, _CHUNK)
            if found != entry["sha256"]:
                raise IndexDamagedError(f"index file {path} is damaged: its SHA-256 {found[:16]}... differs from the "
                                        f"{entry['sha256'][:16]}... recorded at commit; {advice}")
            hashed.append(name)
    return hashed
