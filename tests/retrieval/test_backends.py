"""Every index backend against brute-force numpy search: results, exclusion, removal, persistence."""
from __future__ import annotations

import numpy as np
import pytest

from opencir.retrieval.index import get_backend, list_backends

BACKENDS = [
    pytest.param(("exact", {}), id="exact"),
    pytest.param(("faiss", {"factory": "Flat"}), id="faiss-flat"),
    pytest.param(("faiss", {"factory": "IVF4,Flat", "nprobe": 4}), id="faiss-ivf"),
    pytest.param(("faiss", {"factory": "HNSW16", "ef_search": 128}), id="faiss-hnsw"),
    pytest.param(("milvus", {}), id="milvus-lite"),
]
DIM = 16


def test_every_registered_backend_is_tested():
    assert {p.values[0][0] for p in BACKENDS} == set(list_backends())


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(queries: np.ndarray, keys: np.ndarray, vectors: np.ndarray, k: int, banned=()) -> np.ndarray:
    scores = queries @ vectors.T
    scores[:, np.isin(keys, list(banned))] = -np.inf
    return keys[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


@pytest.fixture()
def filled(request, tmp_path):
    name, options = request.param
    backend = get_backend(name).create(DIM, options, tmp_path)
    keys = np.arange(100, 300, dtype=np.int64)
    vectors = unit_rows(200, seed=0)
    backend.add(keys[:120], vectors[:120])  # two batches: incremental add
    backend.add(keys[120:], vectors[120:])
    yield backend, keys, vectors, tmp_path
    backend.close()


@pytest.mark.parametrize("filled", BACKENDS, indirect=True)
def test_search_matches_brute_force(filled):
    backend, keys, vectors, _ = filled
    queries = unit_rows(6, seed=1)
    scores, found = backend.search(queries, 10)
    expected = brute_force(queries, keys, vectors, 10)
    assert len(backend) == 200
    assert found.shape == scores.shape == (6, 10)
    # all settings are exhaustive at this size (nprobe = nlist, ef_search >> k)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, found - 100, axis=1), atol=1e-5)


@pytest.mark.parametrize("filled", BACKENDS, indirect=True)
def test_exclusion_and_removal(filled):
    backend, keys, vectors, _ = filled
    queries = unit_rows(3, seed=2)
    top = brute_force(queries, keys, vectors, 3)
    exclude = [[int(top[0, 0])], [], [int(top[2, 0]), int(top[2, 1])]]
    _, found = backend.search(queries, 5, exclude)
    for row, banned in enumerate(exclude):
        np.testing.assert_array_equal(found[row], brute_force(queries[row : row + 1], keys, vectors, 5, banned)[0])
    removed = keys[::4]
    backend.remove(removed)
    assert len(backend) == 150
    _, found = backend.search(queries, 20)
    assert not np.isin(found, removed).any()
    np.testing.assert_array_equal(found, brute_force(queries, keys, vectors, 20, removed.tolist()))


@pytest.mark.parametrize("filled", BACKENDS, indirect=True)
def test_save_and_load_round_trip(filled):
    backend, keys, vectors, root = filled
    (root / "data").mkdir(exist_ok=True)
    backend.remove(keys[:10])
    state = backend.save(root, "000001")
    backend.after_commit()
    for name in backend.state_files(state):
        assert (root / name).is_file()
    queries = unit_rows(4, seed=3)
    before = backend.search(queries, 7)
    backend.close()
    reopened = get_backend(backend.name).load(DIM, backend.options, state, root)
    try:
        after = reopened.search(queries, 7)
        assert len(reopened) == 190
    finally:
        reopened.close()
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-6)


@pytest.mark.parametrize("filled", BACKENDS, indirect=True)
def test_k_larger_than_the_index_pads_with_no_result_markers(filled):
    backend, keys, _, _ = filled
    backend.remove(keys[5:])
    scores, found = backend.search(unit_rows(1, seed=4), 8)
    assert sorted(found[0, :5].tolist()) == keys[:5].tolist()
    assert (found[0, 5:] == -1).all() and np.isneginf(scores[0, 5:]).all()


def test_bad_options_and_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown faiss backend options"):
        get_backend("faiss").create(DIM, {"nlist": 3}, tmp_path)
    with pytest.raises(ValueError, match="invalid FAISS factory"):
        get_backend("faiss").create(DIM, {"factory": "NotAnIndex"}, tmp_path)
    with pytest.raises(ValueError, match="takes no options"):
        get_backend("exact").create(DIM, {"factory": "Flat"}, tmp_path)
    backend = get_backend("exact").create(DIM, {}, tmp_path)
    with pytest.raises(ValueError, match="16-d vectors"):
        backend.add(np.arange(2), np.zeros((2, 8), np.float32))
    ivf = get_backend("faiss").create(DIM, {"factory": "IVF64,Flat"}, tmp_path)
    ivf.add(np.arange(10), unit_rows(10, seed=5))
    with pytest.raises(ValueError, match="needs at least 64 vectors"):
        ivf.save(tmp_path, "000001")
    with pytest.raises(KeyError, match="valid index backends: exact, faiss, milvus"):
        get_backend("annoy")
