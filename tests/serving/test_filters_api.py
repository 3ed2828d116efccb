"""Metadata filters and recall targets over HTTP: the ``filter`` / ``target_recall`` fields."""
from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from opencir.retrieval.store import IndexStore
from opencir.serving.app import create_app


@pytest.fixture(scope="module")
def client(served_index):
    with TestClient(create_app(served_index[0])) as c:
        yield c


@pytest.fixture(scope="module")
def captions(served_index) -> dict[str, str]:
    with IndexStore.open(served_index[0]) as store:
        return {r: (store.get(r).metadata or {}).get("caption") for r in store.ids()}


def test_json_and_multipart_filters(client, captions):
    ids = sorted(captions)
    wanted = {captions[ids[1]], captions[ids[2]]}
    reference = ids[0]
    response = client.post("/v1/search", json={"ref_id": reference, "text": "make it blue", "k": 50,
                                               "filter": {"caption": sorted(wanted)}})
    assert response.status_code == 200, response.text
    found = [hit["id"] for hit in response.json()["results"]]
    expected = {i for i, c in captions.items() if c in wanted} - {reference}
    assert set(found) == expected and all(hit["metadata"]["caption"] in wanted for hit in response.json()["results"])

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(buffer, format="PNG")
    response = client.post("/v1/search", files={"image": ("q.png", buffer.getvalue(), "image/png")},
                           data={"text": "add a circle", "k": "50", "filter": json.dumps({"caption": captions[ids[1]]}),
                                 "target_recall": "0.9"})
    assert response.status_code == 200, response.text
    assert {hit["id"] for hit in response.json()["results"]} == {i for i, c in captions.items() if c == captions[ids[1]]}


@pytest.mark.parametrize("body, message", [
    ({"filter": {"caption": {"between": [1, 2]}}}, "unknown operator 'between'"),
    ({"filter": {"caption": {"in": []}}}, "'in' needs a non-empty list"),
    ({"target_recall": 1.5}, "less than or equal to 1"),
])
def test_bad_filters_are_clear_422s(client, captions, body, message):
    response = client.post("/v1/search", json={"ref_id": sorted(captions)[0], "text": "x", **body})
    assert response.status_code == 422 and message in response.json()["error"]["message"]


def test_bad_multipart_filter_json(client, captions):
    fields = {"ref_id": (None, sorted(captions)[0]), "text": (None, "x"), "filter": (None, "{nope")}
    response = client.post("/v1/search", files=fields)  # multipart/form-data
    assert response.status_code == 422 and "filter must be a JSON object" in response.json()["error"]["message"]


def test_batch_queries_carry_their_own_filters(client, captions):
    ids = sorted(captions)
    first, second = captions[ids[1]], captions[ids[2]]
    body = {"k": 50, "queries": [{"ref_id": ids[0], "text": "make it blue", "filter": {"caption": first}},
                                 {"ref_id": ids[0], "text": "make it blue", "filter": {"caption": second}},
                                 {"ref_id": ids[0], "text": "make it blue", "k": 3}]}
    response = client.post("/v1/search/batch", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for result, caption in zip(results[:2], (first, second)):
        assert {h["id"] for h in result["results"]} == {i for i, c in captions.items() if c == caption} - {ids[0]}
    assert len(results[2]["results"]) == 3
    bad = client.post("/v1/search/batch", json={"queries": [body["queries"][0], {**body["queries"][1], "filter": {"x": {}}}]})
    assert bad.status_code == 422 and "queries[1]" in bad.json()["error"]["message"]
