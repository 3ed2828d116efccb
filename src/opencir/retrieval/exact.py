"""Exact top-k search by inner product, tiled on both sides so memory stays bounded.

Queries are taken ``query_tile`` at a time and the gallery ``gallery_block`` rows at a time;
each (tile x block) score block keeps its own top-k, merged into a running top-k per
query. The gallery is read once per query tile (not once per handful of queries), so the
matrix product stays compute-bound at any gallery size, and peak memory is one score
block (``score_budget_bytes``, 64 MB by default) plus the (Q, k) results.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

SCORE_BUDGET_BYTES = 64 << 20
"""Upper bound of one (query tile x gallery block) float32 score block."""
QUERY_TILE = 256
"""Queries per pass over the gallery: enough rows for the product to be compute-bound."""


def tile_shape(num_queries: int, gallery_size: int, budget_bytes: int = SCORE_BUDGET_BYTES) -> tuple[int, int]:
    """(query tile, gallery block) with tile * block * 4 bytes <= ``budget_bytes``."""
    tile = max(1, min(QUERY_TILE, num_queries))
    block = max(1, min(gallery_size, budget_bytes // (4 * tile)))
    if block == gallery_size:  # the whole gallery fits: spend the budget on more queries
        tile = max(1, min(num_queries, budget_bytes // (4 * max(1, gallery_size))))
    return tile, block


def _banned_pairs(exclude: Sequence[Sequence[int]], start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [row for row in range(start, stop) for _ in exclude[row]]
    cols = [col for row in range(start, stop) for col in exclude[row]]
    return (torch.as_tensor(rows, dtype=torch.long) - start, torch.as_tensor(cols, dtype=torch.long))


def exact_top_k(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    score_budget_bytes: int = SCORE_BUDGET_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows per query by dot product (cosine for L2-normalised rows).

    queries (Q, D), gallery (N, D) -> scores (Q, k') float32, indices (Q, k') int64 with
    k' = min(k, N), best first. ``exclude[i]`` lists gallery rows never returned for query
    i (e.g. the reference image); excluded slots that must still fill k' score -inf.
    """
    q = torch.as_tensor(queries, dtype=torch.float32)
    g = torch.as_tensor(gallery, dtype=torch.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"queries {tuple(q.shape)} and gallery {tuple(g.shape)} must be (Q, D) and (N, D)")
    if exclude is not None and len(exclude) != q.shape[0]:
        raise ValueError(f"exclude has {len(exclude)} entries for {q.shape[0]} queries")
    n = g.shape[0]
    k_eff = min(k, n)
    scores_out = np.empty((q.shape[0], k_eff), dtype=np.float32)
    index_out = np.empty((q.shape[0], k_eff), dtype=np.int64)
    tile, block = tile_shape(q.shape[0], n, score_budget_bytes)
    for start in range(0, q.shape[0], tile):
        stop = min(start + tile, q.shape[0])
        banned = _banned_pairs(exclude, start, stop) if exclude is not None else None
        best_scores: torch.Tensor | None = None
        best_index: torch.Tensor | None = None
        for g_start in range(0, n, block):
            g_stop = min(g_start + block, n)
            sims = q[start:stop] @ g[g_start:g_stop].t()  # a view: no transposed copy
            if banned is not None and len(banned[1]):
                inside = (banned[1] >= g_start) & (banned[1] < g_stop)
                sims[banned[0][inside], banned[1][inside] - g_start] = float("-inf")
            top = torch.topk(sims, min(k_eff, g_stop - g_start), dim=1)
            index = top.indices + g_start
            if best_scores is None:
                best_scores, best_index = top.values, index
                continue
            joined = torch.cat([best_scores, top.values], dim=1)
            merged = torch.topk(joined, min(k_eff, joined.shape[1]), dim=1)
            best_scores = merged.values
            best_index = torch.cat([best_index, index], dim=1).gather(1, merged.indices)
        scores_out[start:stop] = best_scores.numpy()
        index_out[start:stop] = best_index.numpy()
    return scores_out, index_out
