"""Every index backend against brute-force numpy search: results, exclusion, removal,
persistence, metadata restrictions; FAISS beyond ``index_factory + add_with_ids``."""
from __future__ import annotations

import numpy as np
import pytest

from opencir.retrieval.filters import MetadataColumns, normalise_metadata, parse_filter
from opencir.retrieval.index import Restriction, get_backend, list_backends

BACKENDS = [
    pytest.param(("exact", {}), id="exact"),
    pytest.param(("faiss", {"factory": "Flat"}), id="faiss-flat"),
    pytest.param(("faiss", {"factory": "IVF4,Flat", "nprobe": 4}), id="faiss-ivf"),
    pytest.param(("faiss", {"factory": "HNSW16", "ef_search": 128}), id="faiss-hnsw"),
    # IVF-PQ fast-scan codes re-ranked with the full vectors: k_factor * k >= 200 candidates -> exact
    pytest.param(("faiss", {"factory": "IVF4,PQ4x4fs,RFlat", "nprobe": 4, "k_factor": 64}), id="faiss-ivfpq-refine"),
    pytest.param(("faiss", {"factory": "IVF4_HNSW8,Flat", "nprobe": 4, "quantizer_ef_search": 16}), id="faiss-ivf-hnswq"),
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


def meta(key: int) -> dict:
    """Metadata of a test row: text, a number written as text (as CSV gives it), a flag."""
    return {"group": f"g{key % 3}", "price": str(key % 50), "sale": "true" if key % 7 == 0 else "false"}


@pytest.fixture()
def filled(request, tmp_path):
    name, options = request.param
    backend = get_backend(name).create(DIM, options, tmp_path)
    keys = np.arange(100, 300, dtype=np.int64)
    vectors = unit_rows(200, seed=0)
    metadata = [normalise_metadata(meta(int(key))) for key in keys]
    backend.add(keys[:120], vectors[:120], metadata[:120])  # two batches: incremental add
    backend.add(keys[120:], vectors[120:], metadata[120:])
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


@pytest.mark.parametrize("filled", BACKENDS, indirect=True)
@pytest.mark.parametrize("spec", [{"group": "g1"}, {"price": {"gte": 10, "lt": 20}}, {"group": ["g0", "g2"], "sale": True}])
def test_restriction_matches_brute_force_over_the_passing_rows(filled, spec):
    """Filters run inside the engine (FAISS selectors on keys, Milvus expressions on its
    JSON field) and give the brute-force top-k of the passing rows, with exclusions too."""
    backend, keys, vectors, _ = filled
    where = parse_filter(spec)
    passing = MetadataColumns(keys, [meta(int(k)) for k in keys]).keys_matching(where)
    assert 0 < len(passing) < 200
    queries = unit_rows(3, seed=6)
    exclude = [[int(passing[0])], [], [int(passing[1]), int(passing[2])]]
    scores, found = backend.search(queries, 5, exclude, restrict=Restriction(passing, where))
    outside = keys[~np.isin(keys, passing)].tolist()
    for row, banned in enumerate(exclude):
        np.testing.assert_array_equal(found[row], brute_force(queries[row : row + 1], keys, vectors, 5, outside + banned)[0])
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("filled", BACKENDS, indirect=True)
def test_per_call_search_params(filled):
    backend, keys, vectors, _ = filled
    knob = backend.search_knob(10)
    queries = unit_rows(4, seed=7)
    if knob is None:
        return
    _, found = backend.search(queries, 10, params={knob.name: knob.high})
    np.testing.assert_array_equal(found, brute_force(queries, keys, vectors, 10))


def test_refined_ivfpq_index_round_trip_and_k_factor(tmp_path):
    """The factory that failed with "add_with_ids not implemented": wrapped in an id map;
    k_factor=1 keeps only the compressed-code ranking, a large k_factor re-ranks exactly."""
    backend = get_backend("faiss").create(DIM, {"factory": "IVF4,PQ4x4fs,RFlat", "nprobe": 4}, tmp_path)
    assert backend.options["k_factor"] == 4 and backend.refine is not None and backend.idmap is not None
    keys, vectors = np.arange(500, 900, dtype=np.int64), unit_rows(400, seed=8)
    backend.add(keys, vectors)
    queries = unit_rows(20, seed=9)
    truth = brute_force(queries, keys, vectors, 10)
    _, wide = backend.search(queries, 10, params={"k_factor": 40})
    np.testing.assert_array_equal(wide, truth)
    _, narrow = backend.search(queries, 10, params={"k_factor": 1})
    assert np.isin(narrow, keys).all() and (narrow != truth).any()  # 4-bit codes alone are approximate
    backend.remove(keys[:50])  # tombstones: IndexRefine cannot remove rows
    (tmp_path / "data").mkdir()
    state = backend.save(tmp_path, "000001")
    reopened = get_backend("faiss").load(DIM, backend.options, state, tmp_path)
    _, after = reopened.search(queries, 10, params={"k_factor": 40})
    np.testing.assert_array_equal(after, brute_force(queries, keys, vectors, 10, keys[:50].tolist()))
    with pytest.raises(ValueError, match="unknown faiss search parameter 'nlist'"):
        reopened.search(queries, 10, params={"nlist": 3})


def test_hnsw_ef_construction_and_training_on_a_sample(tmp_path):
    hnsw = get_backend("faiss").create(DIM, {"factory": "HNSW8", "ef_construction": 80}, tmp_path)
    assert hnsw.hnsw.hnsw.efConstruction == 80
    ivf = get_backend("faiss").create(DIM, {"factory": "IVF8,Flat", "nprobe": 8, "train_size": 50}, tmp_path)
    keys, vectors = np.arange(300, dtype=np.int64), unit_rows(300, seed=10)
    for start in range(0, 300, 100):  # three pending batches, trained on 50 rows drawn across them
        ivf.add(keys[start : start + 100], vectors[start : start + 100])
    assert ivf.training_size(300) == 50 and not ivf.index.is_trained
    _, found = ivf.search(unit_rows(3, seed=11), 10)
    assert ivf.index.is_trained and ivf.index.ntotal == 300 and not ivf._pending
    np.testing.assert_array_equal(found, brute_force(unit_rows(3, seed=11), keys, vectors, 10))
    with pytest.raises(ValueError, match="train_size must be an integer >= 1"):
        get_backend("faiss").create(DIM, {"factory": "IVF8,Flat", "train_size": 0}, tmp_path)


def test_milvus_inserts_fresh_keys_over_leftovers_of_an_interrupted_write(tmp_path):
    """Keys written but never committed (a crash) are handed out again: the next writing
    session replaces them instead of duplicating them."""
    backend = get_backend("milvus").create(DIM, {}, tmp_path)
    options = backend.options
    backend.add(np.arange(10), unit_rows(10, seed=12))
    state = backend.save(tmp_path, "000001")  # committed: keys 0..9
    backend.add(np.arange(10, 20), unit_rows(10, seed=13))
    backend.save(tmp_path, "000002")  # flushed to Milvus, but the manifest never named it
    backend.close()
    reopened = get_backend("milvus").load(DIM, options, state, tmp_path)
    try:
        fresh = unit_rows(10, seed=14)
        reopened.add(np.arange(10, 20), fresh)
        reopened.save(tmp_path, "000003")
        assert len(reopened) == 20
        scores, found = reopened.search(fresh, 1)
        np.testing.assert_array_equal(found[:, 0], np.arange(10, 20))
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    finally:
        reopened.close()
