"""Search speed: exact vs IVF vs HNSW on random vectors, and end-to-end query latency.

Part 1 (``--n``, default 1,000,000 vectors of ``--dim`` 512, L2-normalised Gaussian):
each backend is built through OpenCIR's own backend classes (``exact`` = FAISS flat,
``faiss`` with an IVF and an HNSW factory string), then ``--queries`` random queries are
searched one at a time (the serving case: p50/p99 latency) and as one batch (throughput).
Recall@10 of the approximate indexes is measured against the exact top-10.

``--data random`` (the default) draws Gaussian vectors: the hardest case for approximate
search, since in 512-d all similarities are close to 0 and a query's true top-10 are
barely closer than any other vector. ``--data clustered`` gives the vectors structure,
as real embeddings have: ``n / --cluster-size`` random centres, each vector a centre
plus Gaussian noise of relative norm ``--spread`` (cosine to its centre about 0.7 at
spread 1), and queries are fresh draws from the same clusters.

Part 2 (``--e2e``): end-to-end latency of ``Retriever.search`` (encode the reference and
the text with the model, compose, search) with the small model (``small-vit``, 64 px;
weights from ``--clip`` if given) over a generated cir-shapes gallery, by gallery id and
by uploaded image, split into encode and search time.

    OMP_NUM_THREADS=1 python benchmarks/bench_search.py --n 1000000
    OMP_NUM_THREADS=1 python benchmarks/bench_search.py --n 200000 --data clustered --e2e --clip /tmp/opencir-cache/small-clip-....pt
"""
from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from opencir.retrieval.index import IndexBackend, get_backend


def unit_gaussian(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """(n, dim) float32 L2-normalised Gaussian rows, generated in chunks (bounded memory)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


def clustered(centres: np.ndarray, n: int, spread: float, seed: int, chunk: int = 100_000) -> np.ndarray:
    """(n, dim) unit rows: a random centre plus Gaussian noise of norm about ``spread``."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = centres[rng.integers(len(centres), size=m)]
        block = block + rng.standard_normal((m, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def measure(backend: IndexBackend, queries: np.ndarray, k: int) -> dict[str, Any]:
    """Single-query latencies (p50/p99) and batch throughput; returns the batch's keys too."""
    backend.search(queries[:2], k)  # warm-up
    single = []
    for row in range(len(queries)):
        start = time.perf_counter()
        backend.search(queries[row : row + 1], k)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    _, keys = backend.search(queries, k)
    batch = time.perf_counter() - start
    return {"p50_ms": percentile_ms(single, 50), "p99_ms": percentile_ms(single, 99),
            "batch_qps": len(queries) / batch, "keys": keys}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_i ∩ truth_i| / k."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def bench_backends(args: argparse.Namespace) -> list[dict[str, Any]]:
    print(f"generating {args.n:,} x {args.dim} vectors ...", flush=True)
    if args.data == "random":
        vectors = unit_gaussian(args.n, args.dim, seed=0)
        queries = unit_gaussian(args.queries, args.dim, seed=1)
    else:
        centres = unit_gaussian(max(1, args.n // args.cluster_size), args.dim, seed=2)
        vectors = clustered(centres, args.n, args.spread, seed=0)
        queries = clustered(centres, args.queries, args.spread, seed=1)
    keys = np.arange(args.n, dtype=np.int64)
    nlist = args.nlist or int(np.sqrt(args.n))
    configs = [
        ("exact", "exact", {}),
        (f"IVF{nlist},Flat nprobe={args.nprobe}", "faiss", {"factory": f"IVF{nlist},Flat", "nprobe": args.nprobe}),
        (f"HNSW{args.hnsw_m} ef={args.ef_search}", "faiss", {"factory": f"HNSW{args.hnsw_m}", "ef_search": args.ef_search}),
    ]
    rows, truth = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, options in configs:
            if args.skip_hnsw and "HNSW" in label:
                continue
            print(f"building {label} ...", flush=True)
            start = time.perf_counter()
            backend = get_backend(name).create(args.dim, options, Path(tmp))
            for begin in range(0, args.n, 200_000):
                backend.add(keys[begin : begin + 200_000], vectors[begin : begin + 200_000])
            backend.search(queries[:1], 1)  # trains and flushes an IVF index
            build_s = time.perf_counter() - start
            result = measure(backend, queries, args.k)
            truth = result["keys"] if truth is None else truth
            rows.append({"index": label, "build_s": build_s, "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
                         "batch_qps": result["batch_qps"], f"recall@{args.k}": recall_at_k(result["keys"], truth)})
            print(json.dumps(rows[-1]), flush=True)
            backend.close()
            del backend
            gc.collect()
    exact_p50 = rows[0]["p50_ms"]
    print(f"\nsearch over {args.n:,} x {args.dim}-d vectors, {args.queries} queries, k={args.k}"
          f", {args.data} data" + (f" (clusters of {args.cluster_size}, spread {args.spread})" if args.data == "clustered" else ""))
    print(f"{'index':<28} {'build s':>9} {'p50 ms':>8} {'p99 ms':>8} {'speed-up':>9} {'batch q/s':>10} {'recall@' + str(args.k):>10}")
    for row in rows:
        print(f"{row['index']:<28} {row['build_s']:9.1f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
              f"{exact_p50 / row['p50_ms']:8.1f}x {row['batch_qps']:10.0f} {row[f'recall@{args.k}']:10.3f}")
    return rows


def bench_end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    """Latency of Retriever.search with the small model over a generated gallery."""
    import torch
    from PIL import Image

    from opencir.backbones import BackboneSpec
    from opencir.data.synthetic import generate_cir_shapes
    from opencir.methods.io import build_method, save_model
    from opencir.retrieval.catalogue import read_catalogue
    from opencir.retrieval.indexing import index_catalogue
    from opencir.retrieval.retriever import Retriever

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = generate_cir_shapes(root / "shapes", seed=0, train_triplets=args.e2e_images // 2,
                                   val_triplets=10, test_triplets=10, image_size=64, workers=1)
        torch.manual_seed(0)
        model_dir = save_model(build_method(args.method, BackboneSpec("small-vit", args.clip)), root / "model")
        catalogue = read_catalogue(data / "images")
        from opencir.methods import load_model

        start = time.perf_counter()
        index_catalogue(load_model(model_dir), catalogue, root / "index", model_dir=model_dir, batch_size=128)
        index_s = time.perf_counter() - start
        ids = [e.image_id for e in catalogue.entries]
        rng = np.random.default_rng(0)
        texts = ["make the red circle blue", "add a small green square at top left", "remove the triangle",
                 "move the cross to the center", "make the diamond large"]
        with Retriever(root / "index", model_dir) as retriever:
            for _ in range(3):
                retriever.search(ids[0], texts[0], k=10)  # warm-up
            timings: dict[str, list[float]] = {"by id": [], "by upload": []}
            parts: dict[str, list[float]] = {"encode": [], "search": []}
            for i in range(args.e2e_queries):
                ref = ids[int(rng.integers(len(ids)))]
                start = time.perf_counter()
                result = retriever.search(ref, texts[i % len(texts)], k=10)
                timings["by id"].append(time.perf_counter() - start)
                for key in parts:
                    parts[key].append(result.timings_ms[key] / 1000)
                image = Image.open(catalogue.entries[ids.index(ref)].path).convert("RGB")
                start = time.perf_counter()
                retriever.search(image, texts[i % len(texts)], k=10)
                timings["by upload"].append(time.perf_counter() - start)
    print(f"\nend-to-end Retriever.search, {args.method} on small-vit (64 px), exact index of {len(ids)} images "
          f"(indexed in {index_s:.1f} s), {args.e2e_queries} queries, torch threads={torch.get_num_threads()}")
    print(f"{'query':<12} {'p50 ms':>8} {'p99 ms':>8}")
    summary = {}
    for name, values in {**timings, **{f"  {k}": v for k, v in parts.items()}}.items():
        summary[name.strip()] = {"p50_ms": percentile_ms(values, 50), "p99_ms": percentile_ms(values, 99)}
        print(f"{name:<12} {percentile_ms(values, 50):8.2f} {percentile_ms(values, 99):8.2f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default sqrt(n))")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--data", choices=["random", "clustered"], default="random")
    parser.add_argument("--cluster-size", type=int, default=50, help="mean vectors per cluster (--data clustered)")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre (--data clustered)")
    parser.add_argument("--skip-hnsw", action="store_true", help="HNSW builds slowly on few cores")
    parser.add_argument("--skip-ann", action="store_true", help="only the end-to-end part")
    parser.add_argument("--e2e", action="store_true", help="also measure end-to-end query latency")
    parser.add_argument("--e2e-images", type=int, default=1000, help="about this many gallery images (cir-shapes)")
    parser.add_argument("--e2e-queries", type=int, default=50)
    parser.add_argument("--method", default="sum", help="method for the end-to-end part")
    parser.add_argument("--clip", default=None, help="small-vit checkpoint (.pt); random weights when absent")
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    results: dict[str, Any] = {"args": vars(args)}
    if not args.skip_ann:
        results["ann"] = bench_backends(args)
    if args.e2e:
        results["end_to_end"] = bench_end_to_end(args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
