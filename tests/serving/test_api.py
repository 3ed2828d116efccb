"""The HTTP API with the real app: TestClient (in-process) and a real uvicorn server."""
from __future__ import annotations

import io
import json
import socket
from urllib.parse import urlparse
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from opencir.retrieval.retriever import Retriever
from opencir.serving.app import ServeSettings, create_app, static_dir


@pytest.fixture(scope="module")
def client(served_index):
    with TestClient(create_app(served_index[0])) as c:
        yield c


@pytest.fixture(scope="module")
def retriever(served_index):
    with Retriever(*served_index) as r:
        yield r


def png_bytes(size=(32, 32), mode="RGB", colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def first_ids(client, n=3) -> list[str]:
    return [item["image_id"] for item in client.get(f"/v1/gallery?limit={n}").json()["items"]]


def test_health_info_and_openapi(client, served_index):
    assert client.get("/healthz").json() == {"status": "ok", "images": 136}
    info = client.get("/v1/info").json()
    assert info["model"]["method"] == "sum" and info["index"]["count"] == 136 and info["index"]["backend"] == "exact"
    assert info["limits"]["max_k"] == 100 and "directory" not in info["model"] and "directory" not in info["index"]
    schema = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/images/{image_id}", "/v1/gallery", "/v1/info", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "SearchResponse" in json.dumps(schema["paths"]["/v1/search"]["post"]["responses"]["200"])


def test_json_search_matches_the_python_api(client, retriever):
    ref = first_ids(client, 5)[4]
    response = client.post("/v1/search", json={"ref_id": ref, "text": "make the triangle red", "k": 7})
    assert response.status_code == 200
    body = response.json()
    expected = retriever.search(ref, "make the triangle red", k=7)
    assert [r["image_id"] for r in body["results"]] == [h.image_id for h in expected.hits]
    assert [r["score"] for r in body["results"]] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
    assert ref not in [r["image_id"] for r in body["results"]] and body["turn"] == 1 and body["reference_id"] == ref
    assert body["results"][0]["metadata"]["caption"]  # the manifest's caption column
    thumb = client.get(body["results"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)


def test_multipart_upload_and_ref_id(client, retriever, shapes_root):
    image_id = first_ids(client, 1)[0]
    data = (shapes_root / "images" / f"{image_id}.png").read_bytes()
    response = client.post("/v1/search", files={"image": ("ref.png", data, "image/png")},
                           data={"text": "add a blue circle", "k": "5"})
    assert response.status_code == 200, response.text
    expected = retriever.search(Image.open(io.BytesIO(data)), "add a blue circle", k=5)
    assert [r["image_id"] for r in response.json()["results"]] == [h.image_id for h in expected.hits]
    assert response.json()["reference_id"] is None
    by_id = client.post("/v1/search", files={"ref_id": (None, image_id)}, data={"text": "add a blue circle", "k": "5"})
    assert by_id.status_code == 200 and image_id not in [r["image_id"] for r in by_id.json()["results"]]


def test_multi_turn_refinement(client):
    ref = first_ids(client, 1)[0]
    first = client.post("/v1/search", json={"ref_id": ref, "text": "make it bigger", "k": 5}).json()
    chosen = first["results"][2]["image_id"]
    second = client.post("/v1/search", json={"ref_id": chosen, "text": "move it left", "k": 5,
                                             "session_id": first["session_id"]}).json()
    assert second["turn"] == 2 and second["session_id"] == first["session_id"] and second["excluded"] == 6
    assert not {r["image_id"] for r in first["results"]} & {r["image_id"] for r in second["results"]}
    missing = client.post("/v1/search", json={"ref_id": ref, "text": "x", "session_id": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_session"


def _bomb() -> bytes:
    """A small PNG that decodes to 64 million pixels."""
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000), 0).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


BAD_REQUESTS = [
    ("not an image", {"files": {"image": ("x.png", b"hello, not a picture", "image/png")}, "data": {"text": "x"}}, 400, "not_an_image"),
    ("truncated", {"files": {"image": ("x.png", png_bytes((64, 64))[:120], "image/png")}, "data": {"text": "x"}}, 400, "corrupt_image"),
    ("empty file", {"files": {"image": ("x.png", b"", "image/png")}, "data": {"text": "x"}}, 400, "empty_image"),
    ("bomb", {"files": {"image": ("x.png", _bomb(), "image/png")}, "data": {"text": "x"}}, 413, "image_too_large"),
    ("no reference", {"files": {"text": (None, "x")}}, 422, "invalid_request"),
    ("missing text", {"json": {"ref_id": "0000000"}}, 422, "invalid_request"),
    ("empty text", {"json": {"ref_id": "0000000", "text": ""}}, 422, "invalid_text"),
    ("blank text", {"json": {"ref_id": "0000000", "text": "  \n "}}, 422, "invalid_text"),
    ("long text", {"json": {"ref_id": "0000000", "text": "x" * 501}}, 422, "invalid_text"),
    ("k zero", {"json": {"ref_id": "0000000", "text": "x", "k": 0}}, 422, "invalid_k"),
    ("k too big", {"json": {"ref_id": "0000000", "text": "x", "k": 101}}, 422, "invalid_k"),
    ("k not a number", {"files": {"ref_id": (None, "0000000")}, "data": {"text": "x", "k": "ten"}}, 422, "invalid_request"),
    ("unknown id", {"json": {"ref_id": "no-such-image", "text": "x"}}, 404, "unknown_image"),
    ("traversal id", {"json": {"ref_id": "../../../etc/passwd", "text": "x"}}, 404, "unknown_image"),
    ("extra field", {"json": {"ref_id": "0000000", "text": "x", "path": "/etc/passwd"}}, 422, "invalid_request"),
    ("json list", {"json": [1, 2]}, 422, "invalid_request"),
    ("broken json", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ("wrong type", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
]


@pytest.mark.parametrize("request_kwargs, status, code", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_bad_search_requests_get_clear_json_errors(client, request_kwargs, status, code):
    response = client.post("/v1/search", **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert client.get("/healthz").status_code == 200  # still serving


@pytest.mark.parametrize("path, status, code", [
    ("/v1/images/..%2F..%2F..%2Fetc%2Fpasswd", 404, "unknown_image"),
    ("/v1/images/%2Fetc%2Fpasswd", 404, "unknown_image"),
    ("/v1/images/0000000%00", 404, "unknown_image"),
    ("/v1/images/0000000?size=4096", 422, "invalid_size"),
    ("/v1/images/0000000?size=2", 422, "invalid_request"),
    ("/v1/gallery?limit=0", 422, "invalid_request"),
    ("/v1/nothing", 404, "not_found"),
])
def test_bad_image_and_gallery_requests(client, path, status, code):
    response = client.get(path)
    assert response.status_code == status and response.json()["error"]["code"] == code


def test_gallery_paging_and_filter(client):
    page = client.get("/v1/gallery?offset=130&limit=10").json()
    assert page["total"] == 136 and len(page["items"]) == 6
    every = [item["image_id"] for item in client.get("/v1/gallery?limit=200").json()["items"]]
    needle = every[7][-2:]
    filtered = client.get(f"/v1/gallery?q={needle}").json()
    assert [item["image_id"] for item in filtered["items"]] == [i for i in every if needle in i]
    assert filtered["total"] == len(filtered["items"]) >= 1


def test_upload_size_limit(served_index):
    app = create_app(served_index[0], settings=ServeSettings(max_upload_bytes=4096))
    big = png_bytes((256, 256), colour=(1, 2, 3)) + b"\0" * 80_000
    with TestClient(app) as small:
        declared = small.post("/v1/search", files={"image": ("big.png", big, "image/png")}, data={"text": "x"})
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"

        def chunks():  # no Content-Length: the limit is enforced while reading
            for start in range(0, len(big), 8192):
                yield big[start : start + 8192]

        streamed = small.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "too_large"
        assert small.get("/healthz").status_code == 200


def test_web_page_and_static_files_ship_with_the_package(client):
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in static_dir().iterdir()}
    page = client.get("/")
    assert page.status_code == 200 and "OpenCIR" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_real_server_under_concurrent_requests(live_server):
    ids = [item["image_id"] for item in httpx.get(f"{live_server}/v1/gallery?limit=8").json()["items"]]

    def one(i: int) -> int:
        with httpx.Client(base_url=live_server, timeout=30) as http:
            if i % 4 == 3:  # bad requests mixed in
                return http.post("/v1/search", json={"ref_id": "missing", "text": "x"}).status_code
            if i % 4 == 2:
                return http.get(f"/v1/images/{ids[i % 8]}").status_code
            return http.post("/v1/search", json={"ref_id": ids[i % 8], "text": f"variant {i}", "k": 5}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(40)))
    assert statuses.count(404) == 10 and statuses.count(200) == 30
    assert httpx.get(f"{live_server}/healthz").json()["status"] == "ok"


def test_real_server_survives_a_client_that_drops_mid_upload(live_server):
    """A multipart body cut off by the client (Content-Length promises more) must not hurt the server."""
    address = urlparse(live_server)
    body = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n" + png_bytes()[:50]
    head = (f"POST /v1/search HTTP/1.1\r\nHost: {address.netloc}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n").encode()
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head + body)
    response = httpx.post(f"{live_server}/v1/search", json={"ref_id": "missing", "text": "x"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_image"
    assert httpx.get(f"{live_server}/healthz").json()["status"] == "ok"
