"""Search speed and recall: exact vs tuned approximate indexes vs bare FAISS tuned by hand.

Part 1 (default ``--n 100000``; the issue's measurement is ``--n 1000000``): 512-d
clustered vectors (``--data clustered``, the default: ``n / --cluster-size`` random
centres, each vector a centre plus Gaussian noise of relative norm ``--spread``; queries
are fresh draws from the same clusters) or uniform Gaussian ones (``--data random``, the
hardest case). Rows:

* ``exact``: the toolkit's exact backend (FAISS flat), the reference;
* ``tuned <factory>``: the toolkit's ``faiss`` backend built through an index directory
  (``IndexStore``: segments on disk, keys, manifest) and tuned by ``retrieval.tuning``
  for ``--target-recall`` on 500 of its own vectors: IVF-PQ fast-scan codes with exact
  re-ranking in RAM (``IVF<nlist>,PQ<d/4>x4fs,RFlat``) or from the stored vectors on disk
  (``IVF<nlist>,PQ<d/4>x4fs`` with ``rerank``), IVF-Flat, and HNSW (``--skip-hnsw``:
  it builds slowly on few cores); ``--indexes`` picks the rows;
* ``bare FAISS``: the same IVF-PQ re-ranked index built with FAISS alone, its nprobe and
  k_factor set by hand (``--hand-nprobe``, ``--hand-k-factor``).

Each row: build time, p50/p99 latency of single queries (the serving case), batch
throughput, recall@k on the benchmark's queries (not the tuning sample) against exact
search, and bytes per vector of the saved index.

``--build-memory``: peak memory growth while building an IVF index from 65,536-row
batches (as ``opencir index`` hands them over), in fresh subprocesses: today's path
(pending list + concatenation + training on everything) vs streaming adds with training
on a sample.

``--milvus``: milvus-lite on ``--milvus-n`` vectors through the ``milvus`` backend: where
insert and search time go, the new inserts (numpy rows, insert of fresh keys) vs the old
ones (``tolist`` rows, upsert), one batched search with per-query exclusions vs one
filtered search per query.

Part 2 (``--e2e``): end-to-end latency of ``Retriever.search`` (encode the reference and
the text with the model, compose, search) with the small model (``small-vit``, 64 px;
weights from ``--clip`` if given) over a generated cir-shapes gallery.

    OMP_NUM_THREADS=1 python benchmarks/bench_search.py                       # moderate, ~5 min
    OMP_NUM_THREADS=1 python benchmarks/bench_search.py --n 1000000 --skip-hnsw --out r.json
    OMP_NUM_THREADS=1 python benchmarks/bench_search.py --skip-ann --build-memory --n 1000000
    OMP_NUM_THREADS=1 python benchmarks/bench_search.py --skip-ann --milvus --milvus-n 100000
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from opencir.retrieval.index import get_backend


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


def measure(search, queries: np.ndarray, k: int) -> dict[str, Any]:
    """Single-query latencies (p50/p99) and batch throughput of ``search(queries, k) -> keys``."""
    search(queries[:2], k)  # warm-up
    single = []
    for row in range(len(queries)):
        start = time.perf_counter()
        search(queries[row : row + 1], k)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    keys = search(queries, k)
    batch = time.perf_counter() - start
    return {"p50_ms": percentile_ms(single, 50), "p99_ms": percentile_ms(single, 99),
            "batch_qps": len(queries) / batch, "keys": keys}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_i ∩ truth_i| / k."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    print(f"generating {args.n:,} x {args.dim} {args.data} vectors ...", flush=True)
    if args.data == "random":
        return unit_gaussian(args.n, args.dim, seed=0), unit_gaussian(args.queries, args.dim, seed=1)
    centres = unit_gaussian(max(1, args.n // args.cluster_size), args.dim, seed=2)
    return clustered(centres, args.n, args.spread, seed=0), clustered(centres, args.queries, args.spread, seed=1)


def build_store(root: Path, vectors: np.ndarray, backend: str, options: dict[str, Any]):
    """An index directory holding ``vectors`` (ids v0..), built in 65,536-row batches."""
    from opencir.retrieval.store import IndexStore

    store = IndexStore.create(root, vectors.shape[1], backend, options, "bench", {})
    for start in range(0, len(vectors), 65536):
        stop = min(len(vectors), start + 65536)
        store.add([f"v{i}" for i in range(start, stop)], vectors[start:stop], [""] * (stop - start))
    store.commit()
    return store


def index_bytes(root: Path, store) -> int:
    return sum((root / name).stat().st_size for name in store.backend.state_files(store.manifest["backend"]["state"]))


def bench_backends(args: argparse.Namespace) -> list[dict[str, Any]]:
    from opencir.retrieval.tuning import search_keys, tune_backend

    vectors, queries = make_data(args)
    nlist = args.nlist or max(16, int(np.sqrt(args.n)))
    pq = f"IVF{nlist},PQ{args.dim // 4}x4fs,RFlat"
    codes = f"IVF{nlist},PQ{args.dim // 4}x4fs"
    available: dict[str, tuple[str, str, dict[str, Any]]] = {
        "ivfpq-rflat": (f"tuned {pq}", "faiss", {"factory": pq, "k_factor": args.k_factor}),
        "ivfpq-disk": (f"tuned {codes} +disk rerank {args.k_factor}", "faiss",
                       {"factory": codes, "rerank": args.k_factor}),
        "ivf-flat": (f"tuned IVF{nlist},Flat", "faiss", {"factory": f"IVF{nlist},Flat"}),
        "hnsw": (f"tuned HNSW{args.hnsw_m}", "faiss", {"factory": f"HNSW{args.hnsw_m}"}),
    }
    chosen = [name for name in args.indexes.split(",") if name]
    unknown = set(chosen) - set(available) - {"bare"}
    if unknown:
        raise SystemExit(f"unknown --indexes {sorted(unknown)}; choose from {sorted(available)} and bare")
    configs: list[tuple[str, str, dict[str, Any]]] = [("exact", "exact", {})]
    configs += [available[name] for name in chosen if name in available and not (name == "hnsw" and args.skip_hnsw)]
    rows, truth = [], None
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for number, (label, name, options) in enumerate(configs):
            print(f"building {label} ...", flush=True)
            root = Path(tmp) / f"index{number}"
            start = time.perf_counter()
            store = build_store(root, vectors, name, options)
            build_s = time.perf_counter() - start
            tuned: dict[str, Any] = {}
            if name != "exact":
                start = time.perf_counter()
                report = tune_backend(store, args.target_recall, args.k, sample=args.tune_sample)
                store.set_search_options(store.backend.options_with({report.knob: report.chosen}), report.to_dict())
                tuned = {"tune_s": time.perf_counter() - start, "knob": f"{report.knob}={report.chosen}",
                         "sample_recall": report.recall}
                print(f"  tuned in {tuned['tune_s']:.0f} s: {tuned['knob']} (recall {report.recall:.3f} on its own "
                      f"vectors, curve {report.to_dict()['curve']})", flush=True)
            backend = store.backend
            result = measure(lambda q, k: search_keys(store, q, k, None), queries, args.k)
            truth = result["keys"] if truth is None else truth
            rows.append({"index": label, "build_s": build_s, **tuned, "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
                         "batch_qps": result["batch_qps"], f"recall@{args.k}": recall_at_k(result["keys"], truth),
                         "bytes_per_vector": index_bytes(root, store) / args.n})
            print(json.dumps({k: v for k, v in rows[-1].items()}), flush=True)
            store.close()
            del store, backend
            gc.collect()
        if "bare" in chosen:
            rows += bare_faiss(args, vectors, queries, truth, pq, Path(tmp))
    exact_p50 = rows[0]["p50_ms"]
    print(f"\nsearch over {args.n:,} x {args.dim}-d vectors, {args.queries} queries, k={args.k}, {args.data} data"
          + (f" (clusters of {args.cluster_size}, spread {args.spread})" if args.data == "clustered" else "")
          + f", target recall {args.target_recall}")
    print(f"{'index':<42} {'setting':<14} {'build s':>8} {'p50 ms':>7} {'p99 ms':>7} {'vs exact':>8} "
          f"{'batch q/s':>9} {'recall@' + str(args.k):>9} {'B/vector':>8}")
    for row in rows:
        print(f"{row['index']:<42} {row.get('knob', ''):<14} {row['build_s']:8.1f} {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} "
              f"{exact_p50 / row['p50_ms']:7.1f}x {row['batch_qps']:9.0f} {row[f'recall@{args.k}']:9.3f} "
              f"{row['bytes_per_vector']:8.0f}")
    return rows


def bare_faiss(args: argparse.Namespace, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray,
               factory: str, tmp: Path) -> list[dict[str, Any]]:
    """The same re-ranked IVF-PQ index with FAISS alone, nprobe / k_factor set by hand."""
    import faiss

    print(f"building bare FAISS {factory} ...", flush=True)
    start = time.perf_counter()
    index = faiss.index_factory(args.dim, factory, faiss.METRIC_INNER_PRODUCT)
    nlist = faiss.extract_index_ivf(index).nlist
    sample = np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), max(65536, 256 * nlist)), replace=False)
    index.train(vectors[np.sort(sample)])
    for begin in range(0, len(vectors), 65536):
        index.add(vectors[begin : begin + 65536])
    build_s = time.perf_counter() - start
    faiss.write_index(index, str(tmp / "bare.index"))
    rows = []
    for pair in args.hand.split(","):
        nprobe, k_factor = pair.split(":")
        setting = f"nprobe={nprobe},k_factor_rf={k_factor}"
        faiss.ParameterSpace().set_index_parameters(index, setting)
        result = measure(lambda q, k: index.search(q, k)[1], queries, args.k)
        rows.append({"index": f"bare FAISS {factory}", "knob": f"nprobe={nprobe},kf={k_factor}", "build_s": build_s,
                     "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "batch_qps": result["batch_qps"],
                     f"recall@{args.k}": recall_at_k(result["keys"], truth),
                     "bytes_per_vector": (tmp / "bare.index").stat().st_size / args.n})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- build memory
def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_memory_child(mode: str, n: int, dim: int, factory: str) -> dict[str, Any]:
    """Run in a fresh process: generate batches, build, report peak RSS growth (MiB)."""
    import faiss

    centres = unit_gaussian(max(1, n // 50), dim, seed=2)
    batches = [clustered(centres, min(65536, n - s), 1.0, seed=s) for s in range(0, n, 65536)]
    keys = [np.arange(s, s + len(b), dtype=np.int64) for s, b in zip(range(0, n, 65536), batches)]
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM) to the current RSS
    base = _status_mib("VmRSS")
    start = time.perf_counter()
    if mode == "today":  # the previous FaissBackend: pending list, one concatenation, train on all
        index = faiss.IndexIDMap2(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT))
        pending = list(zip(keys, batches))
        batches.clear()
        keys.clear()
        all_keys = np.concatenate([k for k, _ in pending])
        all_vectors = np.concatenate([v for _, v in pending])
        index.train(all_vectors)
        index.add_with_ids(all_vectors, all_keys)
    else:
        backend = get_backend("faiss").create(dim, {"factory": factory}, Path("."))
        for k, v in zip(keys, batches):
            backend.add(k, v)
        del k, v
        batches.clear()
        keys.clear()
        backend._train_and_flush()
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    return {"mode": mode, "factory": factory, "data_mib": n * dim * 4 / 2**20, "peak_growth_mib": peak - base,
            "build_s": seconds}


def bench_build_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    nlist = args.nlist or max(16, int(np.sqrt(args.n)))
    rows = []
    for factory in (f"IVF{nlist},Flat", f"IVF{nlist},PQ{args.dim // 4}x4fs,RFlat"):
        for mode in ("today", "streaming"):
            code = ("import json, sys; sys.path.insert(0, 'benchmarks'); from bench_search import build_memory_child; "
                    f"print(json.dumps(build_memory_child({mode!r}, {args.n}, {args.dim}, {factory!r})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\npeak memory growth while building from 65,536-row batches, {args.n:,} x {args.dim} "
          f"({rows[0]['data_mib']:.0f} MiB of vectors)")
    print(f"{'factory':<34} {'today MiB':>10} {'streaming MiB':>14} {'ratio':>6} {'today s':>8} {'stream s':>9}")
    for today, new in zip(rows[::2], rows[1::2]):
        print(f"{today['factory']:<34} {today['peak_growth_mib']:10.0f} {new['peak_growth_mib']:14.0f} "
              f"{today['peak_growth_mib'] / max(1.0, new['peak_growth_mib']):5.1f}x {today['build_s']:8.1f} {new['build_s']:9.1f}")
    return rows


# ----------------------------------------------------------------------------------- milvus
def bench_milvus(args: argparse.Namespace) -> dict[str, Any]:
    """milvus-lite through the backend: insert / flush / search time, new vs old paths."""
    centres = unit_gaussian(max(1, args.milvus_n // args.cluster_size), args.dim, seed=2)
    vectors = clustered(centres, args.milvus_n, args.spread, seed=0)
    queries = clustered(centres, args.queries, args.spread, seed=1)
    keys = np.arange(args.milvus_n, dtype=np.int64)
    out: dict[str, Any] = {"n": args.milvus_n}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        backend = get_backend("milvus").create(args.dim, {}, root)
        client, collection = backend.client, backend.collection
        start = time.perf_counter()
        backend.add(keys, vectors)
        out["insert_s"] = time.perf_counter() - start
        start = time.perf_counter()
        backend.save(root, "000001")
        out["flush_s"] = time.perf_counter() - start
        # the old insert path on a second collection: per-row Python lists, upsert
        old = get_backend("milvus").create(args.dim, {"metadata": False}, root)
        subset = min(args.milvus_n, 32768)
        start = time.perf_counter()
        for begin in range(0, subset, 8192):
            rows = [{"id": int(k), "vector": v.tolist()} for k, v in zip(keys[begin : begin + 8192], vectors[begin : begin + 8192])]
            old.client.upsert(old.collection, rows)
        out["old_insert_rows_per_s"] = subset / (time.perf_counter() - start)
        out["insert_rows_per_s"] = args.milvus_n / out["insert_s"]
        old.close()
        bare = get_backend("milvus").create(args.dim, {"metadata": False}, root)
        start = time.perf_counter()
        bare.add(keys[:subset], vectors[:subset])
        out["insert_no_metadata_rows_per_s"] = subset / (time.perf_counter() - start)
        bare.close()
        exact = get_backend("exact").create(args.dim, {}, root)
        exact.add(keys, vectors)
        _, truth = exact.search(queries, args.k)
        result = measure(lambda q, k: backend.search(q, k)[1], queries, args.k)
        flat = measure(lambda q, k: exact.search(q, k)[1], queries, args.k)
        out.update({"p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "batch_qps": result["batch_qps"],
                    "recall": recall_at_k(result["keys"], truth), "faiss_flat_p50_ms": flat["p50_ms"],
                    "faiss_flat_batch_qps": flat["batch_qps"]})
        # where a single search's time goes: the client call vs converting its answer
        params = {"metric_type": "IP", "params": {}}
        calls = []
        for row in range(min(50, len(queries))):
            start = time.perf_counter()
            client.search(collection, data=queries[row : row + 1].tolist(), limit=args.k, output_fields=["id"],
                          search_params=params)
            calls.append(time.perf_counter() - start)
        out["client_search_p50_ms"] = percentile_ms(calls, 50)
        for level in ("Bounded", "Session"):  # without Strong consistency's wait for the next time tick
            calls = []
            for row in range(min(50, len(queries))):
                start = time.perf_counter()
                client.search(collection, data=queries[row : row + 1].tolist(), limit=args.k, output_fields=["id"],
                              search_params=params, consistency_level=level)
                calls.append(time.perf_counter() - start)
            out[f"{level.lower()}_search_p50_ms"] = percentile_ms(calls, 50)
        # exclusions: one batched call (new) vs one filtered call per query (old)
        batch = queries[:64]
        exclude = [[int(k) for k in row[:3]] for row in truth[:64]]
        start = time.perf_counter()
        _, found = backend.search(batch, args.k, exclude)
        out["exclude_batched_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(batch)
        start = time.perf_counter()
        for row, banned in enumerate(exclude):
            client.search(collection, data=batch[row : row + 1].tolist(), limit=args.k,
                          filter=f"id not in [{','.join(map(str, banned))}]", output_fields=["id"], search_params=params)
        out["exclude_per_query_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(batch)
        assert not any(set(f) & set(e) for f, e in zip(found.tolist(), exclude))
        backend.close()
        exact.close()
    print(f"\nmilvus-lite, {args.milvus_n:,} x {args.dim} vectors, FLAT index, k={args.k}")
    print(f"  insert {out['insert_rows_per_s']:.0f} rows/s (old upsert of tolist rows: {out['old_insert_rows_per_s']:.0f}"
          f" rows/s, {out['insert_rows_per_s'] / out['old_insert_rows_per_s']:.2f}x; new path without the metadata field: "
          f"{out['insert_no_metadata_rows_per_s']:.0f} rows/s, "
          f"{out['insert_no_metadata_rows_per_s'] / out['old_insert_rows_per_s']:.2f}x); flush {out['flush_s']:.1f} s")
    print(f"  single query p50 {out['p50_ms']:.1f} ms (client call alone {out['client_search_p50_ms']:.1f} ms) vs FAISS flat "
          f"{out['faiss_flat_p50_ms']:.1f} ms; batch {out['batch_qps']:.0f} q/s vs {out['faiss_flat_batch_qps']:.0f}; "
          f"recall {out['recall']:.3f}")
    print(f"  single query p50 with consistency Bounded {out['bounded_search_p50_ms']:.1f} ms, "
          f"Session {out['session_search_p50_ms']:.1f} ms (Strong waits for the next time tick)")
    print(f"  64 queries with exclusions: {out['exclude_batched_ms_per_query']:.1f} ms/query batched vs "
          f"{out['exclude_per_query_ms_per_query']:.1f} ms/query one call each "
          f"({out['exclude_per_query_ms_per_query'] / out['exclude_batched_ms_per_query']:.1f}x)")
    return out


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
    parser.add_argument("--n", type=int, default=100_000, help="database vectors (the issue's goal: 1000000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default sqrt(n))")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--tune-sample", type=int, default=500, help="own vectors the tuning measures recall on")
    parser.add_argument("--k-factor", type=int, default=4, help="re-ranking depth of the toolkit's IVF-PQ index")
    parser.add_argument("--hand", default="16:4,32:4,32:8", help="bare FAISS nprobe:k_factor settings, set by hand")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--data", choices=["random", "clustered"], default="clustered")
    parser.add_argument("--cluster-size", type=int, default=50, help="mean vectors per cluster (--data clustered)")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre (--data clustered)")
    parser.add_argument("--skip-hnsw", action="store_true", help="HNSW builds slowly on few cores")
    parser.add_argument("--indexes", default="ivfpq-rflat,ivfpq-disk,ivf-flat,hnsw,bare",
                        help="rows besides exact: ivfpq-rflat, ivfpq-disk, ivf-flat, hnsw, bare")
    parser.add_argument("--skip-ann", action="store_true", help="skip part 1")
    parser.add_argument("--build-memory", action="store_true", help="peak memory of IVF builds, today vs streaming")
    parser.add_argument("--milvus", action="store_true", help="milvus-lite: insert and search time, old vs new paths")
    parser.add_argument("--milvus-n", type=int, default=100_000)
    parser.add_argument("--tmp", default=None, help="folder for temporary index directories")
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
    if args.build_memory:
        results["build_memory"] = bench_build_memory(args)
    if args.milvus:
        results["milvus"] = bench_milvus(args)
    if args.e2e:
        results["end_to_end"] = bench_end_to_end(args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
