"""SHA-256 of files, read in chunks: weight files, index files, imported checkpoints."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path, chunk: int = 1 << 20) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file (what manifests and model configs record)."""
    return {"size": Path(path).stat().st_size, "sha256": file_sha256(path, chunk)}
