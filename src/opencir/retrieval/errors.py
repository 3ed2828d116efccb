"""Errors of the retrieval layer that the CLI reports as one clear line."""
from __future__ import annotations


class IndexBusyError(RuntimeError):
    """Another process holds the index directory's writer lock."""
