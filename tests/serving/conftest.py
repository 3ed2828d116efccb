"""Fixtures for serving tests: a tiny model, an index of cir-shapes test images, live servers."""
from __future__ import annotations

import contextlib
import csv
import json
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch


@pytest.fixture(scope="session")
def served_index(tmp_path_factory, shapes_root, tiny_spec) -> tuple[Path, Path]:
    """(index_dir, model_dir): a ``sum`` model on the tiny ViT over the cir-shapes test
    gallery, indexed from a manifest.csv whose caption column becomes metadata."""
    from opencir.methods import load_model
    from opencir.methods.io import build_method, save_model
    from opencir.retrieval.catalogue import read_catalogue
    from opencir.retrieval.indexing import index_catalogue

    base = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    model_dir = save_model(build_method("sum", tiny_spec), base / "model")
    split = json.loads((shapes_root / "test.json").read_text())
    manifest = base / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path", "caption"])
        for image_id in split["gallery"]:
            writer.writerow([image_id, shapes_root / "images" / f"{image_id}.png", split["images"][image_id]])
    index_catalogue(load_model(model_dir), read_catalogue(manifest), base / "index", model_dir=model_dir)
    return base / "index", model_dir


@contextlib.contextmanager
def run_server(app) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server on a free loopback port; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def live_server(served_index) -> Iterator[str]:
    from opencir.serving.app import create_app

    with run_server(create_app(served_index[0])) as url:
        yield url


@pytest.fixture(scope="session")
def server_runner():
    """The ``run_server(app)`` context manager, for tests that need their own server."""
    return run_server
