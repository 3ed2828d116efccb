"""The index directory: round trips, incremental updates, atomic commits, locking, fingerprints."""
from __future__ import annotations

import json

import numpy as np
import pytest

from opencir.retrieval.faiss_backend import ExactBackend
from opencir.retrieval.store import MANIFEST, FingerprintMismatch, IndexStore, read_manifest

DIM = 8
STORE_BACKENDS = [
    pytest.param(("exact", {}), id="exact"),
    pytest.param(("faiss", {"factory": "IVF2,Flat", "nprobe": 2}), id="faiss-ivf"),
    pytest.param(("faiss", {"factory": "HNSW8", "ef_search": 64}), id="faiss-hnsw"),
    pytest.param(("milvus", {}), id="milvus-lite"),
]


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def new_store(root, backend="exact", options=None) -> IndexStore:
    return IndexStore.create(root, DIM, backend, options or {}, "fp-1", {"method": "sum", "backbone": {"arch": "tiny-vit"}})


def ids_of(results) -> list[list[str]]:
    return [[record.image_id for record, _ in row] for row in results]


@pytest.mark.parametrize("backend", STORE_BACKENDS)
def test_round_trip_add_delete_reopen(tmp_path, backend):
    name, options = backend
    vectors = unit_rows(30, seed=0)
    ids = [f"im{i:02d}" for i in range(30)]
    with new_store(tmp_path, name, options) as store:
        store.add(ids[:20], vectors[:20], [f"/p/{i}.png" for i in ids[:20]], [{"n": i} for i in range(20)])
        store.commit()
        store.add(ids[20:], vectors[20:], [f"/p/{i}.png" for i in ids[20:]])
        store.delete(["im03", "im25"])
        store.commit()
        queries = unit_rows(3, seed=1)
        before = store.search(queries, 5, [["im00"], [], []])
    with IndexStore.open(tmp_path) as store:
        assert len(store) == 28 and "im03" not in store and "im25" not in store
        assert store.manifest["generation"] == 2 and store.manifest["backend"]["name"] == name
        after = store.search(queries, 5, [["im00"], [], []])
        assert store.get("im07").path == "/p/im07.png" and store.get("im07").metadata == {"n": 7}
        np.testing.assert_array_equal(store.vectors(["im07", "im29"]), vectors[[7, 29]])
    assert ids_of(before) == ids_of(after)
    live = np.array([i not in (3, 25) for i in range(30)])
    scores = queries @ vectors.T
    scores[:, ~live] = -np.inf
    scores[0, 0] = -np.inf
    expected = [[ids[j] for j in np.argsort(-row, kind="stable")[:5]] for row in scores]
    assert ids_of(after) == expected
    # only the files of the last two generations remain (the previous one for racing readers)
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert [n for n in names if n.startswith("records-")] == ["records-000001.json", "records-000002.json"]


def test_crash_during_commit_keeps_the_previous_index(tmp_path):
    class CrashingBackend(ExactBackend):
        def save(self, directory, tag):
            (directory / "data" / f"exact-{tag}.index").write_bytes(b"half a file")
            raise OSError("disk full")

    vectors = unit_rows(12, seed=0)
    with new_store(tmp_path) as store:
        store.add([f"a{i}" for i in range(6)], vectors[:6], ["p"] * 6)
        store.commit()
    store = IndexStore.open(tmp_path, writable=True)
    crashing = CrashingBackend(DIM, store.backend.options, index=store.backend.index)
    store.backend = crashing
    store.add([f"b{i}" for i in range(6)], vectors[6:], ["p"] * 6)
    with pytest.raises(OSError, match="disk full"):
        store.commit()
    store.close()
    manifest_before = read_manifest(tmp_path)
    assert manifest_before["generation"] == 1
    with IndexStore.open(tmp_path, writable=True) as reopened:
        assert len(reopened) == 6 and reopened.ids() == [f"a{i}" for i in range(6)]
        assert ids_of(reopened.search(vectors[:1], 1)) == [["a0"]]
        reopened.add(["c0"], vectors[6:7], ["p"])
        reopened.commit()  # garbage of the failed commit is collected here
    files = {p.name for p in (tmp_path / "data").iterdir()}
    assert "exact-000002.index" in files  # rewritten by the successful commit of generation 2
    assert len([f for f in files if f.startswith("seg-")]) == 2
    with IndexStore.open(tmp_path) as store:
        assert len(store) == 7


def test_unreferenced_keys_are_dropped_from_results(tmp_path):
    """An interrupted write to an external engine can leave keys the manifest does not list."""
    vectors = unit_rows(10, seed=0)
    with new_store(tmp_path) as store:
        store.add([f"x{i}" for i in range(10)], vectors, ["p"] * 10)
        store.commit()
        store.backend.add(np.arange(1000, 1010), vectors)  # orphans, identical to the real rows
        results = store.search(vectors[:2], 4)
    assert [len(r) for r in results] == [4, 4]
    assert ids_of(results)[0][0] == "x0" and ids_of(results)[1][0] == "x1"


def test_one_writer_at_a_time_and_read_only_guard(tmp_path):
    with new_store(tmp_path) as store:
        store.add(["a"], unit_rows(1, 0), ["p"])
        store.commit()
        with pytest.raises(RuntimeError, match=r"being written by process \d+ on "):
            IndexStore.open(tmp_path, writable=True)
        with IndexStore.open(tmp_path) as reader:  # readers need no lock
            assert reader.ids() == ["a"]
            with pytest.raises(RuntimeError, match="read-only"):
                reader.delete(["a"])


def test_bad_input_errors(tmp_path):
    with new_store(tmp_path) as store:
        store.add(["a", "b"], unit_rows(2, 0), ["p", "q"])
        with pytest.raises(ValueError, match="already in the index"):
            store.add(["a"], unit_rows(1, 1), ["p"])
        with pytest.raises(ValueError, match=r"shape \(1, 8\)"):
            store.add(["c"], unit_rows(2, 1), ["p"])
        with pytest.raises(KeyError, match="not in the index"):
            store.delete(["zzz"])
        with pytest.raises(KeyError, match="image id 'zzz' is not in the index"):
            store.get("zzz")
        store.commit()
    with pytest.raises(FileExistsError):
        new_store(tmp_path)
    with pytest.raises(FileNotFoundError, match="not an OpenCIR index directory"):
        IndexStore.open(tmp_path / "nothing")
    (tmp_path / MANIFEST).write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        IndexStore.open(tmp_path)


def test_fingerprint_mismatch_is_refused_with_a_clear_message(tmp_path):
    with new_store(tmp_path) as store:
        store.add(["a"], unit_rows(1, 0), ["p"])
        store.commit()
        store.check_fingerprint("fp-1")
        with pytest.raises(FingerprintMismatch, match="fingerprint fp-2.*not the model that built.*method 'sum' on 'tiny-vit'"):
            store.check_fingerprint("fp-2", "model runs/x")
    assert json.loads((tmp_path / MANIFEST).read_text())["fingerprint"] == "fp-1"
