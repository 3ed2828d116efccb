"""Bounded load test of ``opencir serve`` on loopback: concurrent clients, zero errors expected.

Starts a real server (``python -m opencir.cli serve``) as a subprocess on a free port,
then ``--clients`` concurrent clients (each its own HTTP connection) send ``--requests``
requests in total, a mix of:

* JSON searches by gallery id (half of them refine the client's previous result in its
  session, the multi-turn path),
* multipart searches with an uploaded image,
* thumbnail fetches.

Prints count, errors and p50/p90/p99/max latency per kind and overall, and exits 1 when
any request failed (a non-2xx status or a transport error). Without ``--index`` a tiny
model and a generated cir-shapes gallery are built in a temporary folder first.

    OMP_NUM_THREADS=1 python benchmarks/load_test.py --clients 50 --requests 400
    OMP_NUM_THREADS=1 python benchmarks/load_test.py --index IDX --model M --clients 50 --requests 400
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

TEXTS = ["make the red circle blue", "add a small green square", "remove the triangle", "move it to the left",
         "make the cross large", "change the colour to yellow"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_demo(folder: Path, images: int, arch: str) -> tuple[Path, Path]:
    """A ``sum`` model on ``arch`` and an exact index over a generated cir-shapes gallery."""
    import torch

    from opencir.backbones import BackboneSpec
    from opencir.data.synthetic import generate_cir_shapes
    from opencir.methods.io import build_method, load_model, save_model
    from opencir.retrieval.catalogue import read_catalogue
    from opencir.retrieval.indexing import index_catalogue

    data = generate_cir_shapes(folder / "shapes", seed=0, train_triplets=images // 2, val_triplets=10,
                               test_triplets=10, image_size=64, workers=1)
    torch.manual_seed(0)
    model_dir = save_model(build_method("sum", BackboneSpec(arch)), folder / "model")
    index_catalogue(load_model(model_dir), read_catalogue(data / "images"), folder / "index", model_dir=model_dir)
    return folder / "index", model_dir


def start_server(index: Path, model: Path | None, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "opencir.cli", "serve", "--index", str(index), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
    if model is not None:
        command += ["--model", str(model)]
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def wait_ready(base: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server was not ready after {timeout_s} s")


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server this script started (by its pid): SIGINT, then SIGKILL if needed."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def run_load(base: str, clients: int, total: int, seed: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as probe:
        gallery = (await probe.get("/v1/gallery", params={"limit": 200})).json()["items"]
        uploads = [(await probe.get(item["thumbnail_url"])).content for item in gallery[:10]]
    ids = [item["image_id"] for item in gallery]
    counter = iter(range(total))
    records: list[dict[str, Any]] = []

    async def client(number: int) -> None:
        rng = random.Random(seed + number)
        session: tuple[str, str] | None = None  # (session id, a result id to refine from)
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
            for _ in counter:
                roll = rng.random()
                if roll < 0.6:
                    kind = "search (json)"
                    payload: dict[str, Any] = {"ref_id": rng.choice(ids), "text": rng.choice(TEXTS), "k": 10}
                    if session is not None and rng.random() < 0.5:
                        kind = "refine (json)"
                        payload.update(session_id=session[0], ref_id=session[1])
                    request = http.post("/v1/search", json=payload)
                elif roll < 0.8:
                    kind = "search (upload)"
                    request = http.post("/v1/search", files={"image": ("ref.jpg", rng.choice(uploads), "image/jpeg")},
                                        data={"text": rng.choice(TEXTS), "k": "10"})
                else:
                    kind = "thumbnail"
                    request = http.get(f"/v1/images/{rng.choice(ids)}", params={"size": 128})
                start = time.perf_counter()
                try:
                    response = await request
                    status = response.status_code
                    if kind != "thumbnail" and status == 200:
                        body = response.json()
                        if body["results"]:
                            session = (body["session_id"], rng.choice(body["results"])["image_id"])
                except httpx.HTTPError as err:
                    status = f"{type(err).__name__}"
                records.append({"kind": kind, "status": status, "seconds": time.perf_counter() - start})

    await asyncio.gather(*(client(i) for i in range(clients)))
    return records


def report(records: list[dict[str, Any]], wall_s: float, clients: int) -> int:
    errors = [r for r in records if r["status"] != 200]
    print(f"\n{len(records)} requests from {clients} concurrent clients in {wall_s:.1f} s "
          f"({len(records) / wall_s:.1f} req/s), {len(errors)} errors")
    print(f"{'kind':<16} {'count':>6} {'errors':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    kinds = sorted({r["kind"] for r in records}) + ["all"]
    for kind in kinds:
        chosen = [r for r in records if kind in ("all", r["kind"])]
        ms = np.array([r["seconds"] for r in chosen]) * 1000
        print(f"{kind:<16} {len(chosen):6d} {sum(r['status'] != 200 for r in chosen):6d} "
              f"{np.percentile(ms, 50):8.1f} {np.percentile(ms, 90):8.1f} {np.percentile(ms, 99):8.1f} {ms.max():8.1f}")
    for err in errors[:10]:
        print("error:", err)
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="index directory (default: build a demo one)")
    parser.add_argument("--model", type=Path, help="model directory (default: the one recorded in the index)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--demo-images", type=int, default=400, help="gallery size of the demo index")
    parser.add_argument("--demo-arch", default="small-vit", help="backbone of the demo model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index, model = args.index, args.model
        if index is None:
            print("building a demo model and index ...", flush=True)
            index, model = build_demo(Path(tmp), args.demo_images, args.demo_arch)
        port = free_port()
        server = start_server(index, model, port)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, server)
            start = time.perf_counter()
            records = asyncio.run(run_load(base, args.clients, args.requests, args.seed))
            wall = time.perf_counter() - start
            healthy = httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        finally:
            stop_server(server)
    code = report(records, wall, args.clients)
    print(f"server healthy after the load: {healthy}")
    return code if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
