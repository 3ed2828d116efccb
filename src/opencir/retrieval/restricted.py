"""Filtered search with a guarantee: no fewer than ``k`` results when ``k`` images pass.

The backend runs the filter inside its search (FAISS id selectors, Milvus expressions).
Approximate indexes can still come back short: an IVF index scans only ``nprobe`` lists
and a graph search only ``ef_search`` candidates, and with a selective filter few of
those pass. Every query whose result is shorter than ``min(k, passing - excluded)`` is
therefore answered again exactly, over the stored vectors of the passing images (which
is also how a small passing set, ``EXACT_SUBSET`` images or fewer, is searched at once:
exact and cheaper than an index search).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .exact import exact_top_k
from .index import Restriction
from .rerank import rescore

if TYPE_CHECKING:
    from .store import IndexStore, Record

EXACT_SUBSET = 4096
"""Filters passing at most this many images are searched exactly over those images."""


def _exact_rows(store: "IndexStore", queries: np.ndarray, keys: np.ndarray, k: int,
                exclude: Sequence[set[int]]) -> list[list[tuple["Record", float]]]:
    vectors = store.vectors_of_keys(keys)
    where = {int(key): i for i, key in enumerate(keys.tolist())}
    banned = [[where[b] for b in e if b in where] for e in exclude]
    scores, rows = exact_top_k(queries, vectors, k, banned)
    records = store.records
    return [[(records.record(records.key_position[int(keys[r])]), float(s)) for s, r in zip(row_s, row_r) if np.isfinite(s)]
            for row_s, row_r in zip(scores, rows)]


def restricted_search(store: "IndexStore", queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None,
                      restrict: Restriction, params: Mapping[str, Any] | None = None) -> list[list[tuple["Record", float]]]:
    """Top-``k`` records per query among ``restrict.keys`` (see the module docstring)."""
    keys = restrict.keys
    excluded = [set(map(int, e)) for e in exclude] if exclude is not None else [set() for _ in range(len(queries))]
    if len(keys) == 0 or k < 1:
        return [[] for _ in range(len(queries))]
    expected = [min(k, len(keys) - int(np.isin(np.fromiter(e, np.int64, len(e)), keys).sum())) for e in excluded]
    if len(keys) <= EXACT_SUBSET:
        return _exact_rows(store, queries, keys, k, excluded)
    depth = store.backend.rerank_depth(k)
    scores, found = store.backend.search(queries, depth or k, exclude, restrict=restrict, params=params)
    if depth:
        scores, found = rescore(store, queries, found)
    records = store.records
    slot = np.minimum(np.searchsorted(keys, found), len(keys) - 1)
    passes = keys[slot] == found  # defensive: a backend must only return passing keys (keys are sorted)
    results: list[list[tuple["Record", float]]] = []
    for row_scores, row_keys, row_passes, banned in zip(scores, found.tolist(), passes, excluded):
        row = [(records.record(records.key_position[key]), float(score))
               for score, key, ok in zip(row_scores, row_keys, row_passes)
               if ok and key >= 0 and key not in banned and key in records.key_position]
        results.append(row[:k])
    short = [i for i, (row, want) in enumerate(zip(results, expected)) if len(row) < want]
    if short:
        redo = _exact_rows(store, queries[short], keys, k, [excluded[i] for i in short])
        for i, row in zip(short, redo):
            results[i] = row
    return results
