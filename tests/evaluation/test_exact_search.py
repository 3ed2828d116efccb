"""Tiled exact top-k equals a brute-force ranking; exclusions are honoured across blocks."""
from __future__ import annotations

import numpy as np
import pytest

from opencir.retrieval.exact import QUERY_TILE, exact_top_k, tile_shape


def _bruteforce(q, g, exclude, k):
    full = q @ g.T
    for i, banned in enumerate(exclude):
        full[i, banned] = -np.inf
    return [np.argsort(-row, kind="stable")[:k] for row in full], full


@pytest.mark.parametrize("budget", [4 * 8 * 7, 4 * 37 * 50, 64 << 20])  # many blocks, one block, default
@pytest.mark.parametrize("k", [1, 5, 23])  # 23 > the 7-row blocks: merges must keep k
def test_matches_bruteforce_and_excludes(budget, k):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    g = rng.normal(size=(50, 8)).astype(np.float32)
    exclude = [[i % 50, (i * 7 + 3) % 50] for i in range(37)]
    scores, idx = exact_top_k(q, g, k, exclude, score_budget_bytes=budget)
    expected, full = _bruteforce(q, g, exclude, k)
    assert idx.shape == scores.shape == (37, k)
    for i in range(37):
        assert list(idx[i]) == list(expected[i])
        assert np.allclose(scores[i], full[i, expected[i]], atol=1e-5)
        assert not set(exclude[i]) & set(idx[i])


def test_tiles_fit_the_budget():
    for queries, gallery in [(4181, 2297), (2048, 1_000_000), (3, 10), (1, 123_403)]:
        tile, block = tile_shape(queries, gallery)
        assert tile * block * 4 <= 64 << 20 and 1 <= tile <= queries and 1 <= block <= gallery
    assert tile_shape(4096, 1_000_000)[0] == QUERY_TILE  # a big gallery is read once per 256 queries
    assert tile_shape(4181, 2297) == (4181, 2297)  # small galleries: one block, many queries


def test_k_larger_than_gallery_and_all_excluded():
    q = np.eye(2, 3, dtype=np.float32)
    g = np.eye(3, dtype=np.float32)
    scores, idx = exact_top_k(q, g, 10, [[0, 1, 2], []], score_budget_bytes=8)
    assert idx.shape == (2, 3)
    assert np.isinf(scores[0]).all()  # everything excluded: k' slots of -inf (callers drop them)
    assert idx[1][0] == 1 and scores[1][0] == 1.0 and sorted(idx[1]) == [0, 1, 2]


def test_shape_errors():
    with pytest.raises(ValueError, match="must be"):
        exact_top_k(np.zeros((2, 3)), np.zeros((4, 5)), 1)
