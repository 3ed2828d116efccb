"""Richer composed queries, batch search and micro-batching (issue 16 "Queries beyond one
image and one sentence", issue 17 item 7): one QuerySpec from CLI, Python and HTTP, the
compiled query vector checked against a hand computation with the method's encoders."""
from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from opencir.cli import main
from opencir.retrieval.query import QuerySpec, Weighted, negative_text_embedding, spec_from_dict
from opencir.retrieval.retriever import Retriever
from opencir.serving.app import create_app
from opencir.serving.batcher import MicroBatcher
from opencir.serving.catalogue_api import redact_paths


@pytest.fixture(scope="module")
def retriever(served_index):
    with Retriever(*served_index) as r:
        yield r


@pytest.fixture(scope="module")
def client(served_index):
    with TestClient(create_app(served_index[0])) as c:
        yield c


@pytest.fixture(scope="module")
def ids(retriever) -> list[str]:
    return retriever.store.ids()[:6]


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm()


def by_hand(retriever: Retriever, refs: list[tuple[str, float]], texts: list[tuple[str, float]],
            negatives: list[tuple[str, float]]) -> np.ndarray:
    """The ``sum`` method's spec query computed step by step from its encoders."""
    method = retriever.method
    with torch.no_grad():
        r = [method.encode_images(retriever._pixels(i)[0][None])["pooled"][0] for i, _ in refs]
        t = [method.encode_texts([s])["pooled"][0] for s, _ in texts]
        a = np.array([w for _, w in refs]) / sum(w for _, w in refs)
        b = np.array([w for _, w in texts]) / sum(w for _, w in texts)
        q = unit(sum(a[i] * b[j] * unit(r[i] + t[j]) for i in range(len(r)) for j in range(len(t))))
        for s, c in negatives:
            q = q - c * unit(method.backbone.encode_text(method.backbone.tokenize([s]))[0])
        return unit(q).numpy()


def test_a_plain_query_is_unchanged(retriever, ids):
    with torch.no_grad():
        method = retriever.method
        expected = unit(method.encode_images(retriever._pixels(ids[0])[0][None])["pooled"][0]
                        + method.encode_texts(["make it blue"])["pooled"][0]).numpy()
    vector, reference = retriever.encode_query(ids[0], "make it blue")
    assert reference == ids[0] and np.allclose(vector, expected, atol=1e-6)


def test_multi_reference_weighted_and_negative_queries_by_hand(retriever, ids):
    spec = QuerySpec((Weighted(ids[0], 2.0), Weighted(ids[1], 1.0)),
                     (Weighted("make it blue", 1.0), Weighted("add a circle", 3.0)),
                     (Weighted("striped", 0.5), Weighted("red", 0.25)))
    expected = by_hand(retriever, [(ids[0], 2.0), (ids[1], 1.0)], [("make it blue", 1.0), ("add a circle", 3.0)],
                       [("striped", 0.5), ("red", 0.25)])
    vector, _ = retriever.encode_query(spec)
    assert np.allclose(vector, expected, atol=1e-5)
    result = retriever.search(spec, k=8)
    gallery = retriever.store.vectors(retriever.store.ids())
    scores = gallery @ expected
    order = [retriever.store.ids()[i] for i in np.argsort(-scores, kind="stable") if retriever.store.ids()[i] not in ids[:2]]
    assert [h.image_id for h in result.hits] == order[:8]
    assert result.reference_ids == ids[:2] and result.reference_id is None and result.excluded == 2
    assert result.text == "make it blue + add a circle - not striped - not red"


def test_a_negative_text_moves_results_away_from_it(retriever, ids):
    plain = retriever.search(ids[0], "make it red", k=10)
    spec = spec_from_dict({"ref_id": ids[0], "text": "make it red", "negative_texts": [{"text": "red", "weight": 1.0}]})
    negative = retriever.search(spec, k=10)
    red = unit(retriever.method.backbone.encode_text(retriever.method.backbone.tokenize(["red"]))[0]).detach().numpy()
    similarity = lambda hits: float(np.mean(retriever.store.vectors([h.image_id for h in hits]) @ red))
    assert similarity(negative.hits) < similarity(plain.hits)


def test_methods_without_a_text_space_refuse_negatives(tiny_spec):
    from opencir.methods.io import build_method

    with pytest.raises(ValueError, match="cannot express a negative text.*methods that can: .*sum"):
        negative_text_embedding(build_method("clip4cir", tiny_spec), ["striped"])


@pytest.mark.parametrize("payload, match", [
    ({"text": "red"}, "at least one reference"),
    ({"ref_id": "a"}, "at least one modification text"),
    ({"ref_id": "a", "text": "red", "texts": [{"text": "x", "weight": -1}]}, "positive finite"),
    ({"ref_id": "a", "text": "red", "colour": "x"}, "unknown keys"),
    ({"references": ["a"] * 9, "text": "red"}, "at most 8 references"),
    ({"ref_id": "a", "text": "  "}, "must not be empty"),
])
def test_bad_specs_name_the_problem(payload, match):
    with pytest.raises(ValueError, match=match):
        spec_from_dict(payload)


def test_http_cli_and_python_give_the_same_ranking(client, retriever, served_index, ids, capsys):
    body = {"references": [ids[0], {"ref_id": ids[1], "weight": 0.5}],
            "texts": ["make it blue", {"text": "add a circle", "weight": 2}], "negative_texts": ["striped"], "k": 6}
    http = client.post("/v1/search", json=body)
    assert http.status_code == 200, http.text
    assert http.json()["reference_ids"] == ids[:2] and http.json()["reference_id"] is None
    spec_json = {key: value for key, value in body.items() if key != "k"}
    python = retriever.search(spec_from_dict(spec_json), k=6)
    assert main(["search", "--index", str(served_index[0]), "--query", json.dumps(spec_json), "-k", "6", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    expected = [h.image_id for h in python.hits]
    assert [r["image_id"] for r in http.json()["results"]] == expected == [r["image_id"] for r in cli["results"]]
    # repeated flags: equal weights
    assert main(["search", "--index", str(served_index[0]), "--ref-id", ids[0], "--ref-id", ids[1], "--text", "red",
                 "--not", "striped", "-k", "4", "--json"]) == 0
    flags = json.loads(capsys.readouterr().out)
    same = retriever.search(QuerySpec((Weighted(ids[0]), Weighted(ids[1])), (Weighted("red"),),
                                      (Weighted("striped", 0.5),)), k=4)
    assert [r["image_id"] for r in flags["results"]] == [h.image_id for h in same.hits]


def test_multipart_with_several_images_and_a_negative_text(client, retriever, shapes_root, ids):
    files = [("image", (f"{i}.png", (shapes_root / "images" / f"{i}.png").read_bytes(), "image/png")) for i in ids[:2]]
    response = client.post("/v1/search", files=files, data={"text": "make it blue", "negative_text": "striped", "k": "5"})
    assert response.status_code == 200, response.text
    from PIL import Image

    images = [Image.open(shapes_root / "images" / f"{i}.png").convert("RGB") for i in ids[:2]]
    expected = retriever.search(QuerySpec(tuple(Weighted(im) for im in images), (Weighted("make it blue"),),
                                          (Weighted("striped", 0.5),)), k=5)
    assert [r["image_id"] for r in response.json()["results"]] == [h.image_id for h in expected.hits]


def test_batch_endpoint_equals_single_searches(client, retriever, ids):
    queries = [{"ref_id": ids[0], "text": "make it blue"}, {"ref_id": ids[1], "text": "add a circle", "k": 3},
               {"references": ids[2:4], "text": "smaller", "negative_texts": ["red"]}]
    response = client.post("/v1/search/batch", json={"queries": queries, "k": 5})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [len(r["results"]) for r in results] == [5, 3, 5]
    for query, got in zip(queries, results):
        k = query.get("k", 5)
        spec = spec_from_dict({key: v for key, v in query.items() if key != "k"})
        single = retriever.search(spec, k=k)
        assert [r["image_id"] for r in got["results"]] == [h.image_id for h in single.hits]
        assert [r["score"] for r in got["results"]] == pytest.approx([h.score for h in single.hits], abs=1e-5)
    bad = client.post("/v1/search/batch", json={"queries": [queries[0], {"ref_id": "nope", "text": "x"}]})
    assert bad.status_code == 404 and bad.json()["error"]["message"].startswith("queries[1]:")
    too_many = client.post("/v1/search/batch", json={"queries": [queries[0]] * 65})
    assert too_many.status_code == 422
    empty = client.post("/v1/search/batch", json={"queries": []})
    assert empty.status_code == 422


def test_cli_batch_from_jsonl_and_csv_with_one_model_load(served_index, retriever, ids, tmp_path, monkeypatch,
                                                         shapes_root, capsys):
    import opencir.retrieval.retriever as retriever_module  # loads directories and hf-hub: names

    loads = []
    original = retriever_module.load_model
    monkeypatch.setattr(retriever_module, "load_model", lambda *a, **kw: loads.append(1) or original(*a, **kw))
    image = tmp_path / "ref.png"
    image.write_bytes((shapes_root / "images" / f"{ids[3]}.png").read_bytes())
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("\n".join(json.dumps(q) for q in [
        {"query_id": "a", "ref_id": ids[0], "text": "make it blue"},
        {"query_id": "b", "references": [ids[1], {"image": "ref.png", "weight": 0.5}], "texts": ["red"], "k": 3},
        {"query_id": "c", "ref_id": ids[2], "text": "bigger", "negative_texts": ["green"]},
    ]) + "\n")
    out = tmp_path / "rankings.json"
    assert main(["search", "--index", str(served_index[0]), "--queries", str(jsonl), "--out", str(out), "-k", "4"]) == 0
    rankings = json.loads(out.read_text())
    assert len(loads) == 1 and list(rankings) == ["a", "b", "c"] and [len(v) for v in rankings.values()] == [4, 3, 4]
    assert rankings["a"] == [h.image_id for h in retriever.search(ids[0], "make it blue", k=4).hits]
    from PIL import Image

    b = QuerySpec((Weighted(ids[1]), Weighted(Image.open(image).convert("RGB"), 0.5)), (Weighted("red"),))
    assert rankings["b"] == [h.image_id for h in retriever.search(b, k=3).hits]
    table = tmp_path / "q.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query_id", "ref_id", "text", "negative_text"])
        writer.writerow(["x", ids[0], "make it blue", ""])
        writer.writerow(["y", ids[2], "bigger", "green"])
    assert main(["search", "--index", str(served_index[0]), "--queries", str(table), "--out", str(out), "-k", "4"]) == 0
    from_csv = json.loads(out.read_text())
    assert from_csv == {"x": rankings["a"], "y": rankings["c"]}
    capsys.readouterr()
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"ref_id": ids[0], "text": "ok"}) + "\n" + json.dumps({"ref_id": "nope", "text": "x"}) + "\n")
    assert main(["search", "--index", str(served_index[0]), "--queries", str(broken), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "query '2'" in err[0] and "'nope'" in err[0]
    assert main(["search", "--index", str(served_index[0]), "--queries", str(tmp_path / "none.jsonl")]) == 2
    assert "query file not found" in capsys.readouterr().err


def test_micro_batcher_groups_concurrent_queries_with_equal_results(retriever, ids):
    batcher = MicroBatcher(retriever, max_size=8, max_wait_ms=200)
    try:
        texts = [f"variant {n}" for n in range(8)]
        prepared = [retriever.prepare(ids[n % 4], t) for n, t in enumerate(texts)]
        results: list = [None] * 8
        start = threading.Barrier(8)

        def one(n: int) -> None:
            with batcher.arriving() as arrival:  # as the HTTP endpoint does, before reading a body
                start.wait()
                results[n] = batcher.search(prepared[n], 5, {ids[5]}, arrival=arrival)

        threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert batcher.batches < 8 and batcher.queries == 8  # some queries shared a forward pass
        for n, result in enumerate(results):
            single = retriever.search(ids[n % 4], texts[n], k=5, exclude=[ids[5]])
            assert [h.image_id for h in result.hits] == [h.image_id for h in single.hits]
            assert [h.score for h in result.hits] == pytest.approx([h.score for h in single.hits], abs=1e-5)
    finally:
        batcher.close()


def test_micro_batcher_waits_only_while_requests_are_arriving(retriever, ids):
    """A lone query runs at once even with a minute-long wait; a query waits for an
    announced request and shares its batch; an announcement closed without a query
    (a request that failed while being read) ends the wait."""
    from concurrent.futures import ThreadPoolExecutor

    batcher = MicroBatcher(retriever, max_size=8, max_wait_ms=60_000)
    first, second = retriever.prepare(ids[0], "make it blue"), retriever.prepare(ids[1], "bigger")
    try:
        with ThreadPoolExecutor(2) as pool:
            assert pool.submit(batcher.search, first, 5).result(timeout=20).hits  # nothing arriving: no wait
            assert (batcher.batches, batcher.queries) == (1, 1)
            with batcher.arriving() as arrival:
                waiting = pool.submit(batcher.search, first, 5)
                while batcher.stats()["arriving"] != 1 or batcher._queue.qsize():  # the worker holds `first`
                    time.sleep(0.005)
                time.sleep(0.05)
                assert not waiting.done()  # it waits for the announced request
                joined = batcher.search(second, 5, arrival=arrival)
            assert waiting.result(timeout=20).hits and joined.hits
            assert (batcher.batches, batcher.queries) == (2, 3)  # one batch of two
            with batcher.arriving():
                waiting = pool.submit(batcher.search, first, 5)
                time.sleep(0.05)
            assert waiting.result(timeout=20).hits  # closed without a query: the wait ends
            assert (batcher.batches, batcher.queries) == (3, 4) and batcher.stats()["arriving"] == 0
    finally:
        batcher.close()


def test_info_reveals_no_paths_and_docs_work_offline(client, served_index):
    info = client.get("/v1/info").json()
    text = json.dumps(info)
    assert str(served_index[0]) not in text and str(served_index[1]) not in text and "/tmp" not in text
    assert info["serving"]["micro_batching"]["enabled"] is True and info["limits"]["threads"]["torch"] >= 1
    assert redact_paths({"backbone": {"arch": "ViT-B-32", "pretrained": "/home/u/ckpt/open_clip.bin",
                                      "cache_dir": "/home/u/.cache"}, "directory": "/srv/idx", "tag": "laion2b"}) == \
        {"backbone": {"arch": "ViT-B-32", "pretrained": "local file open_clip.bin"}, "tag": "laion2b"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text  # no CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/docs/assets/{asset}").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN


def test_pseudo_word_methods_count_their_prompt(tiny_spec):
    from opencir.backbones.clip import count_tokens
    from opencir.methods.io import build_method
    from opencir.retrieval.query import TextTooLong, check_text_length, text_token_count

    method = build_method("pic2word", tiny_spec)
    prompt_tokens = text_token_count(method, "red") - count_tokens(method.backbone.tokenizer, "red")
    assert prompt_tokens > 0  # "a photo of * that ..." adds tokens
    words = " ".join(["red"] * (77 - 2 - prompt_tokens // 2))  # fits alone, not inside the prompt
    assert count_tokens(method.backbone.tokenizer, words) <= 77 < text_token_count(method, words)
    with pytest.raises(TextTooLong, match="reads at most 77"):
        check_text_length(method, words)
