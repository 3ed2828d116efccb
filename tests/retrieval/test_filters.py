"""Metadata filters: parsing, semantics written out by hand, and the store's guarantee of
no fewer than k results on approximate indexes."""
from __future__ import annotations

import numpy as np
import pytest

from opencir.retrieval import restricted
from opencir.retrieval.filters import MetadataColumns, normalise, parse_cli_filter, parse_filter
from opencir.retrieval.store import IndexStore

RECORDS = [
    {"color": "red", "price": "10", "year": "2020-05-01", "sale": "true"},   # 0
    {"color": "red", "price": "60", "year": "2021-01-01"},                     # 1
    {"color": "blue", "price": "49.5"},                                        # 2
    None,                                                                      # 3
    {"color": "red", "price": "n/a", "brand": "acme"},                         # 4
    {"color": "Red", "price": 3, "brand": "zed", "sale": False},               # 5 (a JSON-typed record)
    {"color": "green", "price": "50", "brand": "acme", "year": "2019-12-31"},  # 6
]


@pytest.mark.parametrize("spec, expected", [
    ({"color": "red"}, [0, 1, 4]),                             # case-sensitive text equality
    ({"price": 10}, [0]),                                      # "10" reads as the number 10
    ({"price": "10.0"}, [0]),
    ({"price": {"lt": 50}}, [0, 2, 5]),                        # "n/a" is text: no order against 50
    ({"price": {"gte": 49.5, "lte": 50}}, [2, 6]),
    ({"brand": ["acme", "zed"]}, [4, 5, 6]),
    ({"brand": {"in": ["acme"]}, "price": {"gt": 40}}, [6]),  # fields are ANDed; "n/a" fails the range
    ({"year": {"gte": "2020-01"}}, [0, 1]),                    # text ranges: ISO dates order as text
    ({"year": {"gte": "2020"}}, []),                           # but "2020" reads as a number: no match
    ({"sale": True}, [0]),
    ({"sale": "false"}, [5]),
    ({"color": {"gt": 5}}, []),                                # mixed kinds never match
    ({"missing": "x"}, []),
])
def test_semantics_by_hand(spec, expected):
    where = parse_filter(spec)
    assert [i for i, r in enumerate(RECORDS) if where.matches(r)] == expected
    columns = MetadataColumns(list(range(100, 100 + len(RECORDS))), RECORDS)
    assert columns.keys_matching(where).tolist() == [100 + i for i in expected]


def test_cli_form_is_the_same_filter():
    assert parse_cli_filter("color=red") == {"color": {"eq": "red"}}
    assert parse_cli_filter(" price < 50 ") == {"price": {"lt": "50"}}
    assert parse_cli_filter("brand=nike|adidas") == {"brand": {"in": ["nike", "adidas"]}}
    assert parse_cli_filter('{"price": {"gte": 1}}') == {"price": {"gte": 1}}
    cli = parse_filter(["color=red", "price<50", "year>=2020"])
    mapping = parse_filter({"color": "red", "price": {"lt": 50}, "year": {"gte": 2020}})
    assert cli == mapping
    assert normalise(" 7 ") == 7.0 and normalise("1e3") == 1000.0 and normalise("nan") == "nan"


@pytest.mark.parametrize("spec, message", [
    ({"price": {"between": [1, 2]}}, "unknown operator 'between'"),
    ({"price": {}}, "no operator given"),
    ({"brand": {"in": []}}, "'in' needs a non-empty list"),
    ({"price": {"lt": [1]}}, "is not a text, number or boolean"),
    ({"sale": {"gt": True}}, "not booleans"),
    ("price", "is not of the form FIELD=VALUE"),
    ("price<", "is not of the form FIELD=VALUE"),
    ('{"price": ', "is not valid JSON"),
    (42, "a filter is an object"),
])
def test_bad_filters_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_filter(spec)


def test_milvus_expression_text():
    where = parse_filter({"color": 'say "hi"', "price": {"gte": 1, "lt": 2.5}, "brand": ["a", "b"]})
    assert where.milvus_expression("meta") == (
        'meta["color"] == "say \\"hi\\"" and meta["price"] >= 1.0 and meta["price"] < 2.5'
        ' and (meta["brand"] == "a" or meta["brand"] == "b")')


# ----------------------------------------------------------- the store's guarantee
DIM = 16


def _store(tmp_path, backend: str, options: dict, n: int = 3000) -> tuple[IndexStore, np.ndarray, list[dict]]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, DIM)).astype(np.float32)
    vectors = centres[rng.integers(30, size=n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    metadata = [{"shard": str(i % 10), "price": str(i % 97)} for i in range(n)]
    store = IndexStore.create(tmp_path / backend, DIM, backend, options, "test", {})
    store.add([f"id{i}" for i in range(n)], vectors, [f"/x/{i}.png" for i in range(n)], metadata)
    store.commit()
    return store, vectors, metadata


def _brute(query, vectors, metadata, where, k, banned=()):
    scores = vectors @ query
    ok = [i for i, m in enumerate(metadata) if where.matches(m) and f"id{i}" not in banned]
    return [f"id{i}" for i in sorted(ok, key=lambda i: -scores[i])[:k]]


@pytest.mark.parametrize("backend, options", [
    ("exact", {}),
    ("faiss", {"factory": "IVF64,Flat", "nprobe": 1}),      # scans 1 list of 64
    ("faiss", {"factory": "HNSW8", "ef_search": 8}),         # a very short candidate list
    ("faiss", {"factory": "IVF16,PQ4x4fs,RFlat", "nprobe": 1, "k_factor": 1}),
], ids=["exact", "ivf-nprobe1", "hnsw-ef8", "ivfpq-refine"])
def test_filtered_search_never_returns_fewer_than_k(tmp_path, monkeypatch, backend, options):
    """Selective filters on indexes tuned far too low still return k results that all
    pass, and with an exhaustive index they are the exact top-k of the passing images."""
    monkeypatch.setattr(restricted, "EXACT_SUBSET", 50)  # exercise the index path on a small store
    store, vectors, metadata = _store(tmp_path, backend, options)
    try:
        rng = np.random.default_rng(1)
        queries = vectors[rng.integers(len(vectors), size=8)] + 0.05
        for spec, k in [({"shard": "3"}, 100), ({"shard": ["1", "2"], "price": {"lt": 30}}, 60), ({"price": "5"}, 40)]:
            where = parse_filter(spec)
            passing = sum(where.matches(m) for m in metadata)
            banned = [{"id3", "id13"} for _ in queries]
            results = store.search(queries, k, banned, where=spec)
            for query, rows in zip(queries, results):
                ids = [record.image_id for record, _ in rows]
                assert len(ids) == min(k, passing - sum(where.matches(metadata[i]) for i in (3, 13)))
                assert all(where.matches(record.metadata) for record, _ in rows) and not {"id3", "id13"} & set(ids)
                if backend == "exact" or len(ids) < k:  # exact index or exact fallback: the true top-k
                    assert ids == _brute(query, vectors, metadata, where, k, {"id3", "id13"})
        assert store.search(queries[:1], 5, where={"shard": "none"}) == [[]]
    finally:
        store.close()


def test_filters_follow_adds_and_deletes(tmp_path):
    store, vectors, _ = _store(tmp_path, "exact", {}, n=200)
    try:
        where = {"shard": "4"}
        before = {r.image_id for r, _ in store.search(vectors[:1], 200, where=where)[0]}
        assert len(before) == 20
        store.delete(["id4", "id14"])
        store.add(["new"], vectors[:1], ["/x/new.png"], [{"shard": "4"}])
        after = {r.image_id for r, _ in store.search(vectors[:1], 200, where=where)[0]}
        assert after == (before - {"id4", "id14"}) | {"new"}
    finally:
        store.close()


def test_disk_reranked_ivfpq_is_exact_and_small(tmp_path, monkeypatch):
    """``rerank=R``: IVF-PQ codes in RAM, R*k candidates re-scored from the stored float32
    segments: the exact top-k (with filters too), with an index file far below flat size."""
    monkeypatch.setattr(restricted, "EXACT_SUBSET", 50)
    store, vectors, metadata = _store(tmp_path, "faiss", {"factory": "IVF16,PQ4x4fs", "nprobe": 16, "rerank": 100})
    flat, _, _ = _store(tmp_path, "exact", {})
    try:
        assert store.backend.rerank_depth(10) == 1000
        queries = vectors[:5] + 0.05
        for query, rows in zip(queries, store.search(queries, 10)):
            scores = vectors @ query
            assert [r.image_id for r, _ in rows] == [f"id{i}" for i in np.argsort(-scores, kind="stable")[:10]]
            np.testing.assert_allclose([s for _, s in rows], np.sort(scores)[::-1][:10], rtol=1e-5)
        where = parse_filter({"shard": "3"})
        for query, rows in zip(queries, store.search(queries, 10, where={"shard": "3"})):
            assert [r.image_id for r, _ in rows] == _brute(query, vectors, metadata, where, 10)

        def size(s):
            return sum((s.directory / f).stat().st_size for f in s.backend.state_files(s.manifest["backend"]["state"]))

        assert size(store) < size(flat) / 2
    finally:
        store.close()
        flat.close()
