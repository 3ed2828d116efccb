"""What a hostile or unlucky client does to the server (issue 12 items 1-5): hostile JSON,
bad UTF-8, tiny extreme-aspect uploads, session floods, over-long texts, slow bodies and
a slow shutdown. Every case must end in a 4xx JSON error (or a bounded wait), never a 500."""
from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from opencir.retrieval.query import TextTooLong
from opencir.retrieval.retriever import Retriever
from opencir.serving.app import ServeSettings, create_app

LONG_TEXT = "make the red square a little bigger " * 10  # 360 characters, about 70 words / 72+ tokens
LONG_A = LONG_TEXT + "and then make it green please now"
LONG_B = LONG_TEXT + "and then make it blue please now"


@pytest.fixture(scope="module")
def client(served_index):
    with TestClient(create_app(served_index[0])) as c:
        yield c


def gallery_ids(client, n=4) -> list[str]:
    return [item["id"] for item in client.get(f"/v1/gallery?limit={n}").json()["items"]]


def encoded_queries(client) -> int:
    return client.app.state.service.batcher.queries


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (255, 0, 0)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


DEEP = 100_000
HOSTILE_JSON = [
    ("deep array", b"[" * DEEP + b"]" * DEEP),
    ("deep object", b'{"a":' * DEEP + b"1" + b"}" * DEEP),
    ("deep text value", b'{"ref_id": "x", "text": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("unclosed deep array", b"[" * DEEP),
    ("lone surrogate in text", b'{"ref_id": "0000000", "text": "make it \\ud800 red"}'),
    ("lone surrogate in ref_id", b'{"ref_id": "\\udfff", "text": "red"}'),
    ("lone surrogate in a key", b'{"ref_id": "0000000", "text": "red", "\\ud834": 1}'),
    ("invalid utf-8", b'{"ref_id": "0000000", "text": "\xff\xfe red"}'),
    ("moderately deep", b'{"ref_id": "0000000", "text": "red", "k": ' + b"[" * 40 + b"]" * 40 + b"}"),
]


@pytest.mark.parametrize("body", [b for _, b in HOSTILE_JSON], ids=[n for n, _ in HOSTILE_JSON])
@pytest.mark.parametrize("path", ["/v1/search", "/v1/search/batch"])
def test_hostile_json_is_a_4xx_before_any_work(client, path, body):
    before = encoded_queries(client)
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text[:300]
    assert response.json()["error"]["code"] in {"invalid_json", "invalid_request"}
    assert encoded_queries(client) == before  # nothing was encoded


def test_a_valid_surrogate_pair_is_fine(client):
    ref = gallery_ids(client, 1)[0]
    response = client.post("/v1/search", content=json.dumps({"ref_id": ref, "text": "make it \U0001F600 red"}).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json()["text"] == "make it \U0001F600 red"


@pytest.mark.parametrize("raw", [b"\xff\xfe red", b"make it \xed\xa0\x80 red", b"caf\xe9"],
                         ids=["invalid bytes", "encoded surrogate", "latin-1"])
def test_multipart_text_must_be_utf8(client, raw):
    ref = gallery_ids(client, 1)[0]
    body = (b"--b\r\nContent-Disposition: form-data; name=\"ref_id\"\r\n\r\n" + ref.encode() +
            b"\r\n--b\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\n" + raw + b"\r\n--b--\r\n")
    response = client.post("/v1/search", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_form"
    assert "utf-8" in response.json()["error"]["message"]
    good = body.replace(raw, "caf\u00e9 au lait".encode())
    ok = client.post("/v1/search", content=good, headers={"content-type": "multipart/form-data; boundary=b"})
    assert ok.status_code == 200 and ok.json()["text"] == "caf\u00e9 au lait"


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (1, 40000)])
def test_tiny_extreme_aspect_uploads_are_answered(client, size):
    data = png(size)
    assert len(data) < 400  # a few hundred bytes
    response = client.post("/v1/search", files={"image": ("strip.png", data, "image/png")}, data={"text": "red"})
    assert response.status_code == 200 and len(response.json()["results"]) == 10


def test_failed_searches_create_no_sessions(client):
    sessions = client.app.state.service.sessions
    before = len(sessions)
    for n in range(30):
        assert client.post("/v1/search", json={"ref_id": f"missing-{n}", "text": "red"}).status_code == 404
        assert client.post("/v1/search", json={"ref_id": "0000000", "text": LONG_A}).status_code == 422
    assert len(sessions) == before


def test_a_session_flood_from_one_client_evicts_only_its_own(served_index):
    app = create_app(served_index[0], settings=ServeSettings(max_sessions=20, max_sessions_per_client=3))
    with TestClient(app, client=("10.0.0.1", 5000)) as alice, TestClient(app, client=("10.0.0.2", 5000)) as mallory:
        ref = gallery_ids(alice, 1)[0]
        kept = alice.post("/v1/search", json={"ref_id": ref, "text": "make it blue", "k": 3}).json()["session_id"]
        for n in range(25):  # more than max_sessions (20)
            assert mallory.post("/v1/search", json={"ref_id": ref, "text": f"variant {n}", "k": 1}).status_code == 200
        sessions = app.state.service.sessions
        assert sessions.clients()["10.0.0.2"] == 3  # max_sessions_per_client
        turn = alice.post("/v1/search", json={"ref_id": ref, "text": "now red", "k": 3, "session_id": kept})
        assert turn.status_code == 200 and turn.json()["turn"] == 2
        limits = alice.get("/v1/info").json()["limits"]
        assert limits["max_sessions"] == 20 and limits["max_sessions_per_client"] == 3
        assert limits["session_ttl_s"] == 3600 and limits["max_session_turns"] == 100


def test_over_long_texts_are_refused_not_cut(client, served_index):
    ref = gallery_ids(client, 1)[0]
    assert len(LONG_A) <= 500 and len(LONG_B) <= 500  # within the character limit
    for text in (LONG_A, LONG_B):
        response = client.post("/v1/search", json={"ref_id": ref, "text": text})
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "text_too_long" and "reads at most 77" in error["message"]
        assert "after word" in error["message"]
    negative = client.post("/v1/search", json={"ref_id": ref, "text": "red", "negative_texts": [LONG_A]})
    assert negative.status_code == 422 and negative.json()["error"]["code"] == "text_too_long"
    with Retriever(*served_index) as retriever:  # the same rule in Python
        with pytest.raises(TextTooLong, match="reads at most 77"):
            retriever.search(ref, LONG_A)
        assert retriever.search(ref, LONG_TEXT[:200]).hits  # a long but fitting text is fine


def test_over_long_text_is_one_clear_line_in_the_cli(served_index, capsys):
    from opencir.cli import main

    assert main(["search", "--index", str(served_index[0]), "--ref-id", "0000000", "--text", LONG_A]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("opencir: error: text is") and "reads at most 77" in err[0]


# ------------------------------------------------------------ real servers
def test_hostile_requests_keep_the_connection_alive(live_server):
    address = urlparse(live_server)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        for body in (b"[" * DEEP + b"]" * DEEP, b'{"ref_id": "x", "text": "\\ud800"}'):
            conn.request("POST", "/v1/search", body=body, headers={"content-type": "application/json"})
            response = conn.getresponse()
            assert response.status == 400 and json.loads(response.read())["error"]["code"] == "invalid_json"
            assert (response.getheader("connection") or "").lower() != "close"
        sock = conn.sock
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200 and conn.sock is sock  # the same keep-alive connection
    finally:
        conn.close()


def test_slow_bodies_time_out(served_index, server_runner):
    app = create_app(served_index[0], settings=ServeSettings(body_timeout_s=1.0))
    with server_runner(app) as url:
        address = urlparse(url)
        head = (f"POST /v1/search HTTP/1.1\r\nHost: {address.netloc}\r\ncontent-type: application/json\r\n"
                "Content-Length: 5000\r\n\r\n").encode()
        sockets = []
        start = time.monotonic()
        for _ in range(20):  # half-sent bodies
            sock = socket.create_connection((address.hostname, address.port), timeout=15)
            sock.sendall(head + b'{"ref_id": "0000000", "te')
            sockets.append(sock)
        try:
            for sock in sockets:
                reply = b""
                while chunk := sock.recv(65536):  # the server closes the connection after the 408
                    reply += chunk
                reply = reply.decode("latin-1")
                assert reply.startswith("HTTP/1.1 408") and "body_timeout" in reply
            assert time.monotonic() - start < 10
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        finally:
            for sock in sockets:
                sock.close()


def start_serve_process(index: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    """``opencir serve`` in a subprocess on a free port, once it answers /healthz."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen([sys.executable, "-m", "opencir.cli", "serve", "--index", str(index), "--port", str(port),
                               "--log-level", "warning", *extra], env=env)
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the server did not start")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server, port
        except httpx.TransportError:
            time.sleep(0.2)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.kill()
        server.wait()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_tiny_extreme_uploads_cost_the_server_bounded_memory(served_index):
    """A 118-byte 1x20000 PNG used to cost the server about 1 GB (two at once 2.2 GB)."""
    server, port = start_serve_process(served_index[0])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            upload = lambda data: http.post("/v1/search", files={"image": ("s.png", data, "image/png")},
                                            data={"text": "red"})
            assert upload(png((64, 64))).status_code == 200  # warm every code path first
            before = peak_rss_mb(server.pid)
            for size in [(1, 20000), (20000, 1), (1, 40000), (40000, 1)] * 2:
                assert upload(png(size)).status_code == 200
            growth = peak_rss_mb(server.pid) - before
        assert growth < 150, f"the server's peak RSS grew by {growth:.0f} MB"
    finally:
        stop(server)


def test_shutdown_is_bounded_by_the_grace_period(served_index):
    server, port = start_serve_process(served_index[0], "--shutdown-grace-s", "2", "--body-timeout-s", "120")
    held = []
    try:
        for _ in range(5):  # requests whose bodies never finish
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{")
            held.append(sock)
        time.sleep(0.5)
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        assert time.monotonic() - start < 8  # the 2 s grace plus the lifespan's shutdown
    finally:
        for sock in held:
            sock.close()
        stop(server)
