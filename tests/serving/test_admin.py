"""A live index behind a running server: HTTP add/delete, CLI commits picked up, auth, concurrency."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from opencir.serving.admin import AdminSettings
from opencir.serving.app import ServeSettings, create_app

TOKEN = "s3cret-token-0123456789"
SETTINGS = ServeSettings(max_k=500)  # searches ask for the whole gallery


@pytest.fixture()
def index_copy(served_index, tmp_path):
    """A private copy of the served index (these tests change it)."""
    index_dir, model_dir = served_index
    shutil.copytree(index_dir, tmp_path / "index", ignore=shutil.ignore_patterns(".lock*"))
    return tmp_path / "index", model_dir


def png(colour, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def add(client, ids, colours, headers=None):
    files = [("image", (f"{i}.png", png(c), "image/png")) for i, c in zip(ids, colours)]
    return client.post("/v1/index/images", files=files, data={"image_id": list(ids)}, headers=headers or {})


def search_ids(client, ref_id, k=50):
    response = client.post("/v1/search", json={"ref_id": ref_id, "text": "the same", "k": k})
    assert response.status_code == 200, response.text
    return [hit["image_id"] for hit in response.json()["results"]]


def test_add_and_delete_over_http_are_seen_by_the_next_request(index_copy):
    index_dir, model_dir = index_copy
    with TestClient(create_app(index_dir, model_dir, SETTINGS)) as client:
        gallery = client.get("/v1/gallery?limit=200").json()
        first = gallery["items"][0]["image_id"]
        response = add(client, ["new/red", "new/blue"], [(250, 0, 0), (0, 0, 250)])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["added"] == ["new/red", "new/blue"] and body["count"] == gallery["total"] + 2
        assert client.get("/v1/images/new/red").status_code == 200
        assert "new/blue" in search_ids(client, "new/red", k=100)  # by id, right after the add
        assert (index_dir / "uploads").is_dir()
        # delete: never returned again, thumbnail gone, gallery shrinks
        response = client.delete(f"/v1/index/images/{first}")
        assert response.status_code == 200 and response.json()["deleted"] == [first]
        assert first not in search_ids(client, "new/red", k=100)
        assert client.get(f"/v1/images/{first}").status_code == 404
        assert client.post("/v1/search", json={"ref_id": first, "text": "x"}).status_code == 404
        response = client.post("/v1/index/delete", json={"ids": ["new/red"]})
        assert response.status_code == 200 and response.json()["count"] == gallery["total"]
        assert client.get("/v1/images/new/red").status_code == 404
        # bad requests are 4xx with the JSON error shape, and change nothing
        assert add(client, ["x"], [(1, 2, 3)] * 1).status_code == 200
        assert add(client, ["x"], [(1, 2, 3)]).json()["error"]["code"] == "invalid_request"  # already there
        bad = client.post("/v1/index/images", files=[("image", ("a.png", b"not an image", "image/png"))], data={"image_id": "y"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "not_an_image"
        assert client.delete("/v1/index/images/nope").status_code == 404
        assert client.post("/v1/index/delete", json={"ids": []}).status_code == 422
        assert client.post("/v1/index/images", files=[("image", ("a.png", png((1, 1, 1)), "image/png"))]).status_code == 422
        assert client.get("/healthz").json()["images"] == gallery["total"] + 1


def test_uploaded_files_of_deleted_images_are_removed(index_copy):
    index_dir, model_dir = index_copy
    with TestClient(create_app(index_dir, model_dir, SETTINGS)) as client:
        assert add(client, ["u1"], [(9, 9, 9)]).status_code == 200
        assert len(list((index_dir / "uploads").rglob("*.png"))) == 1
        assert client.delete("/v1/index/images/u1").status_code == 200
        assert not list((index_dir / "uploads").rglob("*.png"))


def test_a_failed_write_changes_nothing_and_the_server_keeps_serving(index_copy, monkeypatch):
    """A full disk during an HTTP add: 503, the previous generation serves on, the next add works."""
    import errno

    from opencir.retrieval.faiss_backend import FaissBackend

    index_dir, model_dir = index_copy
    real_save = FaissBackend.save

    def full_disk(self, directory, tag):
        (directory / "data" / f"{self.name}-{tag}.index").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with TestClient(create_app(index_dir, model_dir, SETTINGS)) as client:
        count = client.get("/healthz").json()["images"]
        generation = client.get("/v1/info").json()["index"]["generation"]
        monkeypatch.setattr(FaissBackend, "save", full_disk)
        response = add(client, ["f1"], [(7, 7, 7)])
        assert response.status_code == 503 and response.json()["error"]["code"] == "write_failed"
        assert "No space left" in response.json()["error"]["message"]
        assert client.get("/healthz").json()["images"] == count
        assert client.get("/v1/info").json()["index"]["generation"] == generation
        assert client.post("/v1/search", json={"ref_id": "f1", "text": "x"}).status_code == 404
        monkeypatch.setattr(FaissBackend, "save", real_save)
        assert add(client, ["f1"], [(7, 7, 7)]).status_code == 200
        assert client.get("/healthz").json()["images"] == count + 1
    from opencir.retrieval.store import verify_index

    assert verify_index(index_dir)["ok"]


def test_token_and_bind_rules(index_copy):
    index_dir, model_dir = index_copy
    with TestClient(create_app(index_dir, model_dir, SETTINGS, admin=AdminSettings(token=TOKEN, loopback_only=False))) as client:
        assert add(client, ["t1"], [(5, 5, 5)]).status_code == 401
        assert add(client, ["t1"], [(5, 5, 5)], {"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        assert add(client, ["t1"], [(5, 5, 5)], {"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.delete("/v1/index/images/t1").status_code == 401
        assert TOKEN not in client.get("/v1/info").text
    with TestClient(create_app(index_dir, model_dir, SETTINGS, admin=AdminSettings(loopback_only=False))) as client:
        response = add(client, ["t2"], [(5, 5, 5)])
        assert response.status_code == 403 and "OPENCIR_ADMIN_TOKEN" in response.json()["error"]["message"]
    with TestClient(create_app(index_dir, model_dir, SETTINGS)) as client:  # loopback default: open, but not cross-site
        assert add(client, ["t3"], [(5, 5, 5)], {"Origin": "http://evil.example"}).status_code == 403
        assert add(client, ["t3"], [(5, 5, 5)]).status_code == 200
    with pytest.raises(ValueError, match="at least 16 characters"):
        AdminSettings(token="short")


def test_a_running_server_sees_cli_commits_without_restart(index_copy, server_runner):
    """``opencir index --delete`` in another process; the server never returns the id again."""
    index_dir, model_dir = index_copy
    with server_runner(create_app(index_dir, model_dir, SETTINGS)) as url, httpx.Client(base_url=url, timeout=60) as client:
        ids = [item["image_id"] for item in client.get("/v1/gallery?limit=200").json()["items"]]
        victim, reference = ids[1], ids[0]
        assert victim in search_ids(client, reference, k=len(ids))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cli = "import sys; from opencir.cli import main; sys.exit(main(sys.argv[1:]))"
        subprocess.run([sys.executable, "-c", cli, "index", "--out", str(index_dir), "--delete", victim],
                       check=True, env=env, capture_output=True)
        assert victim not in search_ids(client, reference, k=len(ids))
        assert client.get(f"/v1/images/{victim}").status_code == 404
        assert client.get("/healthz").json()["images"] == len(ids) - 1


def test_concurrent_search_load_sees_adds_and_deletes_and_never_a_deleted_id(index_copy, server_runner):
    """Readers search continuously while a writer adds and deletes over HTTP. Every search
    that starts after a delete has returned must not contain the deleted id, and every
    search by an id whose add has returned must find it. Zero errors over many interleavings."""
    index_dir, model_dir = index_copy
    with server_runner(create_app(index_dir, model_dir, SETTINGS)) as url:
        with httpx.Client(base_url=url, timeout=60) as setup:
            original = [item["image_id"] for item in setup.get("/v1/gallery?limit=200").json()["items"]]
        total = len(original) + 40
        deleted_at: dict[str, float] = {}  # id -> when its delete returned
        deleting: set[str] = set()  # ids whose delete request was sent
        added_at: dict[str, float] = {}
        lock = threading.Lock()
        failures: list[str] = []
        searches = [0]
        stop = threading.Event()
        rng = np.random.default_rng(0)

        def reader(seed: int) -> None:
            local = np.random.default_rng(seed)
            with httpx.Client(base_url=url, timeout=60) as client:
                while not stop.is_set():
                    with lock:
                        added = [i for i in added_at if i not in deleted_at]
                        pool = [i for i in original if i not in deleted_at] + added
                        gone = dict(deleted_at)
                    reference = pool[int(local.integers(len(pool)))]
                    started = time.monotonic()
                    response = client.post("/v1/search", json={"ref_id": reference, "text": "bigger", "k": total})
                    if response.status_code != 200:
                        with lock:  # the reference was maybe deleted while we chose it: only then is 404 fine
                            if not (response.status_code == 404 and reference in deleting):
                                failures.append(f"{response.status_code} for {reference}: {response.text}")
                        continue
                    returned = {hit["image_id"] for hit in response.json()["results"]}
                    stale = [i for i in returned if i in gone and gone[i] < started]
                    if stale:
                        failures.append(f"deleted ids {stale} returned by a search started after their deletion")
                    searches[0] += 1

        readers = [threading.Thread(target=reader, args=(seed,)) for seed in range(3)]
        for thread in readers:
            thread.start()
        try:
            with httpx.Client(base_url=url, timeout=60) as writer:
                victims = list(rng.permutation(original)[:12])
                for step in range(24):
                    new_id = f"live/{step:02d}"
                    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
                    files = [("image", (f"{step}.png", png(colour), "image/png"))]
                    response = writer.post("/v1/index/images", files=files, data={"image_id": new_id})
                    assert response.status_code == 200, response.text
                    with lock:
                        added_at[new_id] = time.monotonic()
                    if step % 2 == 0:
                        victim = victims[step // 2]
                        with lock:
                            deleting.add(victim)
                        response = writer.delete(f"/v1/index/images/{victim}")
                        assert response.status_code == 200, response.text
                        with lock:
                            deleted_at[victim] = time.monotonic()
                    # what was just added is searchable by id at once
                    ranked = writer.post("/v1/search", json={"ref_id": new_id, "text": "bigger", "k": total})
                    assert ranked.status_code == 200, ranked.text
                    time.sleep(0.02)
        finally:
            stop.set()
            for thread in readers:
                thread.join()
        assert not failures, failures[:5]
        assert searches[0] >= 30
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/healthz").json()["images"] == len(original) + 24 - 12


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("myhost.example", False)])
def test_serve_decides_the_default_from_the_bind_address(host, loopback):
    from opencir.commands.serve import is_loopback

    assert is_loopback(host) is loopback
