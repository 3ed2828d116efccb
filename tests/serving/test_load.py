"""A bounded load test against a real uvicorn server: concurrent clients send a mix of
valid and hostile requests; every answer must be a 2xx or a 4xx JSON error (zero 5xx, no
dropped connections for complete requests), and the server stays healthy (issue 12)."""
from __future__ import annotations

import asyncio
import io
import json
import random

import httpx
from PIL import Image


def _png(size, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _multipart(fields: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--b\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (k.encode(), v)
                    for k, v in fields) + b"--b--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=b"}


def request_kinds(ids: list[str], upload: bytes) -> dict[str, tuple[set[int], callable]]:
    """name -> (allowed statuses, function(http, rng) -> awaitable response)."""
    deep = b"[" * 100_000 + b"]" * 100_000
    bad_utf8, bad_headers = _multipart([("ref_id", ids[0].encode()), ("text", b"\xff\xfe red")])
    long_text = "make the red square a little bigger " * 12

    def post_json(body: bytes, path: str = "/v1/search"):
        return lambda http, rng: http.post(path, content=body, headers={"content-type": "application/json"})

    return {
        "search": ({200}, lambda http, rng: http.post("/v1/search", json={
            "ref_id": rng.choice(ids), "text": rng.choice(["make it blue", "add a circle", "smaller"]), "k": 5})),
        "spec search": ({200}, lambda http, rng: http.post("/v1/search", json={
            "references": rng.sample(ids, 2), "texts": [{"text": "red", "weight": 2}, "bigger"],
            "negative_texts": ["striped"], "k": 5})),
        "upload": ({200}, lambda http, rng: http.post("/v1/search", files={"image": ("r.png", upload, "image/png")},
                                                      data={"text": "make it green", "k": "5"})),
        "batch": ({200}, lambda http, rng: http.post("/v1/search/batch", json={
            "queries": [{"ref_id": i, "text": "rotate it"} for i in rng.sample(ids, 3)], "k": 3})),
        "thumbnail": ({200}, lambda http, rng: http.get(f"/v1/images/{rng.choice(ids)}?size=64")),
        "info": ({200}, lambda http, rng: http.get("/v1/info")),
        "deep json": ({400}, post_json(deep)),
        "deep batch": ({400}, post_json(deep, "/v1/search/batch")),
        "surrogate": ({400}, post_json(b'{"ref_id": "x", "text": "\\ud800"}')),
        "bad utf-8 form": ({400}, lambda http, rng: http.post("/v1/search", content=bad_utf8, headers=bad_headers)),
        "extreme strip": ({200}, lambda http, rng: http.post("/v1/search", data={"text": "red"}, files={
            "image": ("s.png", _png((1, 20000) if rng.random() < 0.5 else (20000, 1)), "image/png")})),
        "not an image": ({400}, lambda http, rng: http.post("/v1/search", data={"text": "x"},
                                                            files={"image": ("x.png", b"GIF89a nope", "image/png")})),
        "unknown id": ({404}, lambda http, rng: http.post("/v1/search", json={"ref_id": "nope/../x", "text": "x"})),
        "unknown session": ({404}, lambda http, rng: http.post("/v1/search", json={
            "ref_id": ids[0], "text": "x", "session_id": "forged"})),
        "long text": ({422}, lambda http, rng: http.post("/v1/search", json={"ref_id": ids[0], "text": long_text})),
        "bad k": ({422}, lambda http, rng: http.post("/v1/search", json={"ref_id": ids[0], "text": "x", "k": 10**9})),
        "json too large": ({413}, lambda http, rng: http.post("/v1/search", content=b" " * (1024 * 1024 + 1),
                                                              headers={"content-type": "application/json"})),
        # refused from Content-Length alone, before the body is read: the server closes the
        # connection after its 413, so a client still writing may see the reset instead
        "declared too large": ({413, "ReadError", "WriteError", "RemoteProtocolError"}, lambda http, rng: http.post(
            "/v1/search", content=b"{" * (11 * 1024 * 1024), headers={"content-type": "application/json"})),
        "wrong type": ({415}, lambda http, rng: http.post("/v1/search", content=b"x", headers={"content-type": "text/xml"})),
    }


async def run_mix(base: str, ids: list[str], upload: bytes, clients: int, per_client: int) -> list[tuple[str, object]]:
    kinds = request_kinds(ids, upload)
    names = sorted(kinds)
    records: list[tuple[str, object]] = []

    async def client(number: int) -> None:
        rng = random.Random(number)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            for _ in range(per_client):
                name = rng.choice(names)
                try:
                    response = await kinds[name][1](http, rng)
                    status = response.status_code
                    if status >= 400:
                        assert "error" in response.json(), response.text[:200]
                except httpx.HTTPError as err:
                    status = type(err).__name__
                records.append((name, status))

    await asyncio.gather(*(client(n) for n in range(clients)))
    return records


def test_mixed_valid_and_hostile_load_has_zero_5xx(live_server, shapes_root):
    gallery = httpx.get(f"{live_server}/v1/gallery?limit=20").json()["items"]
    ids = [item["id"] for item in gallery]
    upload = (shapes_root / "images" / f"{ids[0]}.png").read_bytes()
    records = asyncio.run(run_mix(live_server, ids, upload, clients=8, per_client=25))
    kinds = request_kinds(ids, upload)
    unexpected = [(name, status) for name, status in records if status not in kinds[name][0]]
    assert len(records) == 200 and not unexpected, unexpected[:10]
    assert not [s for _, s in records if isinstance(s, int) and s >= 500]
    assert len({name for name, _ in records}) >= 15  # the mix covered (almost) every kind
    health = httpx.get(f"{live_server}/healthz", timeout=10)
    assert health.status_code == 200 and json.loads(health.text)["status"] == "ok"
