"""Queries by gallery id: stored reference features vs re-encoding the stored image.

Every refinement turn is a query by id. Without stored features the retriever reads the
image file, decodes, preprocesses and encodes it; with them (``opencir index`` keeps each
image's ``encode_images`` features, keyed by the model fingerprint) it reads one row from
a memory-mapped file. Both paths run in the same process, on the same index and queries,
interleaved; the script prints the per-query latency (median, p90, mean) of each, broken
into encode (reference + text + compose) and search, and their ratio.

    python benchmarks/bench_by_id.py [--images 2000] [--arch small-vit] [--size 512] [--queries 200] [--http]

``--http`` measures through a real uvicorn server on loopback (JSON ``/v1/search`` by
``ref_id``), switching the server's retriever between the two paths request by request.

Model weights are random (the latency does not depend on them). The images are JPEGs of
``--size`` pixels with noise and shapes, so decoding costs what a photo costs.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def make_catalogue(folder: Path, count: int, size: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        x, y = (int(v) for v in rng.integers(0, size // 2, 2))
        ImageDraw.Draw(image).ellipse([x, y, x + size // 3, y + size // 3],
                                      fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(folder / f"img{i:05d}.jpg", quality=90)


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered):7.2f} ms  p90 {p90:7.2f} ms  mean {statistics.mean(ordered):7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512, help="side of the generated JPEGs")
    parser.add_argument("--arch", default="tiny-vit", help="backbone config (tiny-vit, small-vit, ViT-B-32 ...)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = a fair single-core number)")
    parser.add_argument("--http", action="store_true", help="measure over HTTP against a real server")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from opencir.backbones import BackboneSpec
    from opencir.methods import load_model
    from opencir.methods.io import build_method, save_model
    from opencir.retrieval.catalogue import read_catalogue
    from opencir.retrieval.indexing import index_catalogue
    from opencir.retrieval.retriever import Retriever

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_catalogue(root / "images", args.images, args.size)
        torch.manual_seed(0)
        model_dir = save_model(build_method("sum", BackboneSpec(args.arch)), root / "model")
        start = time.perf_counter()
        report = index_catalogue(load_model(model_dir), read_catalogue(root / "images"), root / "idx",
                                 reference_features="on", model_dir=model_dir)
        print(f"indexed {report.added} images ({args.size}px JPEG, {args.arch}) in {time.perf_counter() - start:.1f} s")
        rng = np.random.default_rng(1)
        if args.http:
            times = measure_http(root / "idx", model_dir, rng, args.queries)
            report_times(times, args.queries, "HTTP")
            return
        with Retriever(root / "idx", model_dir) as stored, \
                Retriever(root / "idx", model_dir, use_stored_features=False) as fresh:
            ids = stored.store.ids()
            queries = [ids[int(i)] for i in rng.integers(0, len(ids), args.queries)]
            for warm in queries[:5]:
                stored.search(warm, "make it red", k=10)
                fresh.search(warm, "make it red", k=10)
            times: dict[str, dict[str, list[float]]] = {"stored": {}, "re-encode": {}}
            for image_id in queries:  # interleaved: both see the same machine load
                for name, retriever in (("stored", stored), ("re-encode", fresh)):
                    t0 = time.perf_counter()
                    result = retriever.search(image_id, "make it red", k=10)
                    total = 1000 * (time.perf_counter() - t0)
                    for key, value in {"total": total, **result.timings_ms}.items():
                        times[name].setdefault(key, []).append(value)
                    assert len(result.hits) == 10
        report_times(times, args.queries, "Python")


def report_times(times: dict[str, dict[str, list[float]]], queries: int, how: str) -> None:
    for name, parts in times.items():
        print(f"{name:>9}: total {summary(parts['total'])}   (encode {statistics.median(parts['encode']):.2f} ms, "
              f"search {statistics.median(parts['search']):.2f} ms)")
    ratio = statistics.median(times["re-encode"]["total"]) / statistics.median(times["stored"]["total"])
    print(f"by-id query latency ({how}), re-encode / stored features: {ratio:.1f}x (medians, {queries} queries)")


def measure_http(index_dir: Path, model_dir: Path, rng: np.random.Generator, queries: int) -> dict:
    """Interleaved by-id searches over HTTP; the server's retriever is switched between paths."""
    import threading

    import httpx
    import uvicorn

    from opencir.serving.app import create_app

    app = create_app(index_dir, model_dir)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    times: dict[str, dict[str, list[float]]] = {"stored": {}, "re-encode": {}}
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            ids = [item["id"] for item in client.get("/v1/gallery?limit=200").json()["items"]]
            retriever = app.state.service.retriever
            picks = [ids[int(i)] for i in rng.integers(0, len(ids), queries)]
            for n, image_id in enumerate(picks[:5] * 2 + picks):
                for name, use in (("stored", True), ("re-encode", False)):
                    retriever.use_stored_features = use
                    t0 = time.perf_counter()
                    response = client.post("/v1/search", json={"ref_id": image_id, "text": "make it red", "k": 10})
                    total = 1000 * (time.perf_counter() - t0)
                    assert response.status_code == 200, response.text
                    if n >= 10:  # the first ten are warm-up
                        for key, value in {"total": total, **response.json()["timings_ms"]}.items():
                            times[name].setdefault(key, []).append(value)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return times


if __name__ == "__main__":
    main()
