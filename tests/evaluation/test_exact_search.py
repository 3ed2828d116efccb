"""Chunked exact top-k equals a brute-force ranking; exclusions are honoured."""
from __future__ import annotations

import numpy as np
import pytest

from opencir.retrieval.exact import exact_top_k


def test_matches_bruteforce_and_excludes():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    g = rng.normal(size=(50, 8)).astype(np.float32)
    exclude = [[i % 50] for i in range(37)]
    scores, idx = exact_top_k(q, g, 5, exclude, chunk_size=8)
    full = q @ g.T
    for i in range(37):
        full[i, exclude[i][0]] = -np.inf
        expected = np.argsort(-full[i], kind="stable")[:5]
        assert list(idx[i]) == list(expected)
        assert np.allclose(scores[i], full[i, expected], atol=1e-5)
        assert exclude[i][0] not in idx[i]


def test_shape_errors():
    with pytest.raises(ValueError, match="must be"):
        exact_top_k(np.zeros((2, 3)), np.zeros((4, 5)), 1)
