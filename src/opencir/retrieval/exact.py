"""Exact top-k search by inner product, chunked so memory stays bounded for any gallery."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def exact_top_k(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows per query by dot product (cosine for L2-normalised rows).

    queries (Q, D), gallery (N, D) -> scores (Q, k') float32, indices (Q, k') int64 with
    k' = min(k, N). ``exclude[i]`` lists gallery rows never returned for query i (e.g. the
    reference image). Work is done ``chunk_size`` queries at a time: peak memory is
    O(chunk_size * N), never Q x N.
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
    for start in range(0, q.shape[0], chunk_size):
        stop = min(start + chunk_size, q.shape[0])
        sims = q[start:stop] @ g.t()  # a view: no transposed copy of the gallery
        if exclude is not None:
            for row, banned in enumerate(exclude[start:stop]):
                if len(banned):
                    sims[row, torch.as_tensor(list(banned), dtype=torch.long)] = float("-inf")
        top = torch.topk(sims, k_eff, dim=1)
        scores_out[start:stop] = top.values.numpy()
        index_out[start:stop] = top.indices.numpy()
    return scores_out, index_out
