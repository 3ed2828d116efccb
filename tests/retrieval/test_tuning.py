"""``--target-recall``: tuning nprobe / ef_search against exact search, stored in the index."""
from __future__ import annotations

import json

import numpy as np
import pytest

from opencir.retrieval.store import IndexStore, read_manifest
from opencir.retrieval.tuning import exact_neighbours, params_for_recall, tune_index

DIM = 16


def _index(tmp_path, backend: str, options: dict, n: int = 4000):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    vectors = centres[rng.integers(40, size=n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = tmp_path / backend
    store = IndexStore.create(path, DIM, backend, options, "test", {})
    for start in range(0, n, 1500):  # several segments
        stop = min(n, start + 1500)
        store.add([f"id{i}" for i in range(start, stop)], vectors[start:stop], [f"/x/{i}" for i in range(start, stop)])
    store.commit()
    store.delete(["id0", "id1"])
    store.commit()
    store.close()
    return path, vectors


def test_exact_neighbours_match_brute_force(tmp_path):
    path, vectors = _index(tmp_path, "exact", {}, n=1000)
    with IndexStore.open(path) as store:
        keys = np.array([5, 17, 600], dtype=np.int64)
        found = exact_neighbours(store, vectors[keys], keys, 10)
    scores = vectors[keys] @ vectors.T
    scores[:, [0, 1]] = -np.inf  # deleted
    scores[np.arange(3), keys] = -np.inf  # each query's own image
    expected = np.argsort(-scores, axis=1)[:, :10]
    assert [sorted(r) for r in found.tolist()] == [sorted(r) for r in expected.tolist()]


@pytest.mark.parametrize("options, knob", [
    ({"factory": "IVF64,Flat", "nprobe": 1}, "nprobe"),
    ({"factory": "HNSW4", "ef_search": 10}, "ef_search"),
], ids=["ivf", "hnsw"])
def test_tuning_meets_the_target_and_is_stored(tmp_path, options, knob):
    path, vectors = _index(tmp_path, "faiss", options)
    report = tune_index(path, 0.97, k=10, sample=200)
    assert report.knob == knob and report.met and report.recall >= 0.97
    values = [p.value for p in report.curve]
    assert values == sorted(values) and report.chosen in values
    # the chosen value is the smallest measured one meeting the target with confidence
    chosen = next(p for p in report.curve if p.value == report.chosen)
    assert chosen.low >= 0.97 and chosen.low < chosen.recall
    assert all(p.low < 0.97 for p in report.curve if p.value < report.chosen)
    manifest = read_manifest(path)
    assert manifest["backend"]["options"][knob] == report.chosen
    assert manifest["tuning"]["chosen"] == report.chosen and json.dumps(manifest["tuning"])
    assert params_for_recall(manifest, 0.97) == {knob: report.chosen}
    assert params_for_recall(manifest, 0.5)[knob] <= report.chosen
    # recall re-measured independently on other queries, at the stored default
    with IndexStore.open(path) as store:
        rng = np.random.default_rng(5)
        rows = rng.choice(np.arange(2, len(vectors)), size=100, replace=False)
        keys = rows.astype(np.int64)
        truth = exact_neighbours(store, vectors[rows], keys, 10)
        _, found = store.backend.search(vectors[rows], 11)
        found = [[key for key in row if key != own][:10] for row, own in zip(found.tolist(), keys.tolist())]
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth.tolist())])
    assert recall >= 0.9


def test_exact_index_needs_no_tuning_and_untuned_index_says_what_to_do(tmp_path):
    path, _ = _index(tmp_path, "exact", {}, n=500)
    report = tune_index(path, 0.99, sample=50)
    assert report.knob is None and report.recall == 1.0 and report.met
    assert params_for_recall(read_manifest(path), 0.99) == {}
    path, _ = _index(tmp_path, "faiss", {"factory": "IVF8,Flat"}, n=500)
    with pytest.raises(ValueError, match="has no recall curve; tune it first"):
        params_for_recall(read_manifest(path), 0.9)
    with pytest.raises(ValueError, match=r"target recall must be a number in \(0, 1\]"):
        tune_index(path, 1.5)


def test_milvus_ivf_nprobe_is_tuned_through_search_params(tmp_path):
    path, _ = _index(tmp_path, "milvus", {"index_type": "IVF_FLAT", "index_params": {"nlist": 32}}, n=2000)
    report = tune_index(path, 0.95, sample=100)
    assert report.knob == "nprobe" and report.met and 1 <= report.chosen <= 32
    assert read_manifest(path)["backend"]["options"]["search_params"]["nprobe"] == report.chosen
