"""Load test of ``opencir serve`` on loopback: today's serving path vs micro-batching, zero errors expected.

Starts real servers (``python -m opencir.cli serve``) as subprocesses on free ports, one
per configuration, in the same run:

* ``one forward per request``: ``--micro-batch 1`` and the default torch/FAISS threads
  (the serving path before micro-batching);
* ``micro-batched``: ``--micro-batch 16 --micro-batch-wait-ms 3 --threads T``.

Against each, first one client and then ``--clients`` concurrent clients (each its own
HTTP connection) send ``--requests`` requests in total, a mix of:

* JSON searches by gallery id (half of them refine the client's previous result in its
  session, the multi-turn path),
* multipart searches with an uploaded image,
* thumbnail fetches.

Prints count, errors and p50/p90/p99/max latency per kind and overall for every run, then
throughput and p99 of the micro-batched server as ratios against today's path, and exits
1 when any request failed (a non-2xx status or a transport error). Without ``--index`` a
small model and a generated cir-shapes gallery are built in a temporary folder first.

    python benchmarks/load_test.py --clients 16 --requests 400
    python benchmarks/load_test.py --index IDX --model M --clients 16 --requests 400 --threads 2
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


def start_server(index: Path, model: Path | None, port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "opencir.cli", "serve", "--index", str(index), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", *extra]
    if model is not None:
        command += ["--model", str(model)]
    return subprocess.Popen(command, env=dict(os.environ))


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
    ids = [item["id"] for item in gallery]
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
                            session = (body["session_id"], rng.choice(body["results"])["id"])
                except httpx.HTTPError as err:
                    status = f"{type(err).__name__}"
                records.append({"kind": kind, "status": status, "seconds": time.perf_counter() - start})

    await asyncio.gather(*(client(i) for i in range(clients)))
    return records


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc (Linux; 0 elsewhere).
    On a shared machine this is steadier than wall time: it counts the server's own work."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(records: list[dict[str, Any]], wall_s: float, cpu_s: float) -> dict[str, float]:
    ms = np.array([r["seconds"] for r in records]) * 1000
    return {"throughput": len(records) / wall_s, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "errors": sum(r["status"] != 200 for r in records),
            "cpu_ms": 1000 * cpu_s / len(records)}


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


CONFIGS = {
    "one forward per request": ["--micro-batch", "1"],
    "micro-batched": ["--micro-batch", "16", "--micro-batch-wait-ms", "3"],
}


def measure(index: Path, model: Path | None, extra: list[str], clients: int, total: int, seed: int
            ) -> tuple[dict[int, dict[str, float]], bool, int]:
    """{clients: summary} for 1 and ``clients`` concurrent clients against one fresh server."""
    port = free_port()
    server = start_server(index, model, port, extra)
    base = f"http://127.0.0.1:{port}"
    results, code = {}, 0
    try:
        wait_ready(base, server)
        asyncio.run(run_load(base, 1, 20, seed))  # warm-up
        for n in (1, clients):
            start, cpu = time.perf_counter(), cpu_seconds(server.pid)
            records = asyncio.run(run_load(base, n, total if n > 1 else max(total // 4, 20), seed))
            wall, cpu = time.perf_counter() - start, cpu_seconds(server.pid) - cpu
            print(f"\n== {' '.join(extra)}: {n} client(s)")
            code |= report(records, wall, n)
            results[n] = summary(records, wall, cpu)
        batching = httpx.get(f"{base}/v1/info", timeout=10).json().get("serving", {}).get("micro_batching", {})
        print(f"micro-batching so far: {batching}")
        healthy = httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    finally:
        stop_server(server)
    return results, healthy, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="index directory (default: build a demo one)")
    parser.add_argument("--model", type=Path, help="model directory (default: the one recorded in the index)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="--threads of the micro-batched server (default: the cores of this machine)")
    parser.add_argument("--demo-images", type=int, default=400, help="gallery size of the demo index")
    parser.add_argument("--demo-arch", default="small-vit", help="backbone of the demo model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    code, table = 0, {}
    with tempfile.TemporaryDirectory() as tmp:
        index, model = args.index, args.model
        if index is None:
            print("building a demo model and index ...", flush=True)
            index, model = build_demo(Path(tmp), args.demo_images, args.demo_arch)
        for name, extra in CONFIGS.items():
            extra = extra + (["--threads", str(args.threads)] if name == "micro-batched" else [])
            results, healthy, failed = measure(index, model, extra, args.clients, args.requests, args.seed)
            print(f"server healthy after the load: {healthy}")
            code |= failed | (0 if healthy else 1)
            table[name] = results
    print(f"\n{'configuration':<26} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'server CPU ms/req':>18} {'errors':>6}")
    for name, results in table.items():
        for n, row in results.items():
            print(f"{name:<26} {n:7d} {row['throughput']:8.1f} {row['p50']:8.1f} {row['p99']:8.1f} "
                  f"{row['cpu_ms']:18.1f} {row['errors']:6d}")
    today, batched = table["one forward per request"][args.clients], table["micro-batched"][args.clients]
    cpu_ratio = today["cpu_ms"] / batched["cpu_ms"] if batched["cpu_ms"] else float("nan")
    print(f"\nat {args.clients} clients, micro-batched vs one forward per request: "
          f"throughput {batched['throughput'] / today['throughput']:.2f}x, p99 {batched['p99'] / today['p99']:.2f}x "
          f"(lower is better), server CPU per request {cpu_ratio:.2f}x less")
    for name, results in table.items():
        print(f"{name}: {args.clients} clients get {results[args.clients]['throughput'] / results[1]['throughput']:.2f}x "
              f"the throughput of one client")
    return code


if __name__ == "__main__":
    sys.exit(main())
