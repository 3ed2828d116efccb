"""Exact re-ranking from the stored vectors, for compressed indexes larger than RAM.

An index such as ``IVF1000,PQ128x4fs`` keeps 64 bytes per 512-d vector in memory instead
of 2,048; its scores are approximate. With the backend option ``rerank=R`` the store asks
the index for ``R * k`` candidates and re-scores them with the float32 vectors of the
index directory's segments (memory-mapped: only the candidates' rows are read, from the
page cache or the disk), so the final order is exact. Unlike FAISS' ``RFlat`` refinement,
the float32 vectors never have to fit in RAM.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .index import SearchOutput, empty_results

if TYPE_CHECKING:
    from .store import IndexStore


def rescore(store: "IndexStore", queries: np.ndarray, keys: np.ndarray) -> SearchOutput:
    """Exact scores of the candidate ``keys`` (Q, n), each row re-sorted best first;
    keys unknown to the index (-1 or not in its records) go last as (-inf, -1)."""
    known = store.records.key_position
    valid = np.array([[key >= 0 and key in known for key in row] for row in keys.tolist()], dtype=bool).reshape(keys.shape)
    unique = np.unique(keys[valid])
    scores, out = empty_results(*keys.shape)
    if len(unique) == 0:
        return scores, out
    vectors = store.vectors_of_keys(unique)
    column = {int(key): i for i, key in enumerate(unique.tolist())}
    exact = queries @ vectors.T  # (Q, unique)
    for row in range(len(keys)):
        candidates = keys[row][valid[row]]
        row_scores = exact[row, [column[int(k)] for k in candidates]]
        order = np.argsort(-row_scores, kind="stable")
        scores[row, : len(order)] = row_scores[order]
        out[row, : len(order)] = candidates[order]
    return scores, out
