"""Indexing a catalogue and searching it: exact/FAISS/Milvus backends, ``Retriever``."""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so ``import opencir.retrieval`` does not load torch or faiss.
    if name == "Retriever":
        from .retriever import Retriever

        return Retriever
    raise AttributeError(name)
