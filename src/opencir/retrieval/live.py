"""A long-running reader's view of an index directory: always its newest committed generation.

``LiveIndex.current()`` compares the manifest's file identity (inode, mtime, size: one
``stat``, microseconds) with the generation it holds; after a commit by ``opencir index``
or the HTTP admin API it opens the new generation and swaps it in with one reference
assignment. Each ``IndexStore`` is immutable for readers, so a request works on one
complete generation; a request that starts after a commit has returned sees that commit
(adds found, deleted ids never returned). Replaced stores are closed ``retire_s`` seconds
later, once requests that still hold them are done. A new generation that cannot be opened
(damaged, or built by another model) is logged and the current one keeps serving.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from .store import MANIFEST, IndexStore

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]


def manifest_signature(directory: Path) -> Signature | None:
    """(inode, mtime_ns, size) of the manifest; changes with every commit (atomic replace)."""
    try:
        stat = os.stat(directory / MANIFEST)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class LiveIndex:
    """Holds the newest generation of ``directory``; ``check(store)`` vets each new one
    (e.g. the model fingerprint) and raises to refuse it."""

    def __init__(self, directory: str | Path, check: Callable[[IndexStore], None] | None = None,
                 retire_s: float = 60.0) -> None:
        self.directory = Path(directory)
        self._check = check or (lambda store: None)
        self.retire_s = retire_s
        self._lock = threading.Lock()
        self._retired: list[tuple[float, IndexStore]] = []
        self._refused: Signature | None = None
        signature = manifest_signature(self.directory)
        self._store = self._open()
        self._signature = signature
        self.reloads = 0

    def _open(self) -> IndexStore:
        store = IndexStore.open(self.directory)
        try:
            self._check(store)
        except BaseException:
            store.close()
            raise
        return store

    def current(self) -> IndexStore:
        """The newest committed generation (reopened here when a commit happened)."""
        signature = manifest_signature(self.directory)
        if signature != self._signature and signature != self._refused:
            self.refresh()
        return self._store

    def refresh(self) -> IndexStore:
        """Open the newest generation now if it is not the one held; returns the held store."""
        with self._lock:
            latest = manifest_signature(self.directory)
            if latest == self._signature or latest is None:
                return self._store
            try:
                store = self._open()
            except Exception as err:  # noqa: BLE001 - keep serving the generation we have
                log.error("not switching %s to its new generation: %s", self.directory, err)
                self._refused = latest
                return self._store
            old, self._store, self._signature = self._store, store, latest
            self.reloads += 1
            log.info("%s: now serving generation %s (%d images)", self.directory, store.manifest["generation"], len(store))
            now = time.monotonic()
            self._retired.append((now, old))
            keep = []
            for since, retired in self._retired:
                if now - since >= self.retire_s:
                    retired.close()
                else:
                    keep.append((since, retired))
            self._retired = keep
            return self._store

    def close(self) -> None:
        with self._lock:
            for _, retired in self._retired:
                retired.close()
            self._retired = []
            self._store.close()
