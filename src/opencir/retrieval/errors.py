"""Errors of the retrieval layer that the CLI reports as one clear line."""
from __future__ import annotations


class IndexBusyError(RuntimeError):
    """Another process (or request) holds the index directory's writer lock."""


class IndexDamagedError(ValueError):
    """A file of the committed index is missing, truncated or altered (checksum mismatch)."""
