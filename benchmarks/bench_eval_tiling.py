"""Evaluation ranking at large galleries: query-only chunks (the old path) vs two-sided tiles.

The old path (reference, re-implemented here as it was) scored as many queries at once as
fit a 64 MB score block against the WHOLE gallery: at 1M x 512 that is 16 queries per pass
over 2 GB of vectors, a memory-bound product. The new ``retrieval.exact.exact_top_k`` takes
256 queries per pass and the gallery in 64 MB blocks with a running top-k merge. Both run
in the same process on the same random L2-normalised vectors; rankings must be identical.
Reported: seconds, ns per (query x item), the ratio, and peak RSS growth of each.

    OMP_NUM_THREADS=1 python benchmarks/bench_eval_tiling.py [--gallery 1000000] [--queries 1024] [--dim 512]
"""
from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import torch

from opencir.retrieval.exact import exact_top_k

from bench_protocols import PeakMemory  # same folder: RSS sampler


def old_query_chunks(q: torch.Tensor, g: torch.Tensor, k: int, budget: int = 64 << 20) -> np.ndarray:
    """The previous evaluator path: chunks of queries against the whole gallery."""
    rows = max(1, min(1024, budget // (4 * g.shape[0])))
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for start in range(0, q.shape[0], rows):
        out[start:start + rows] = torch.topk(q[start:start + rows] @ g.t(), k, dim=1).indices.numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=300_000)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    g = torch.nn.functional.normalize(torch.randn(args.gallery, args.dim, generator=gen), dim=1)
    q = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=gen), dim=1)
    exact_top_k(q[:8], g[:1000], args.k)  # warm-up of the kernels
    results = {}
    for name, run in [("old: query chunks", lambda: old_query_chunks(q, g, args.k)),
                      ("new: two-sided tiles", lambda: exact_top_k(q, g, args.k)[1])]:
        gc.collect()
        with PeakMemory() as memory:
            start = time.perf_counter()
            indices = run()
            seconds = time.perf_counter() - start
        results[name] = (seconds, memory.growth_mb, indices)
    pairs = args.gallery * args.queries
    print(f"{args.queries} queries x {args.gallery:,} gallery x {args.dim}-d, k={args.k}, threads {torch.get_num_threads()}")
    for name, (seconds, mb, _) in results.items():
        print(f"  {name:22s} {seconds:7.2f} s  {1e9 * seconds / pairs:6.1f} ns/(query x item)  peak +{mb:6.0f} MB")
    (old_s, _, old_i), (new_s, _, new_i) = results.values()
    print(f"  ratio old/new: {old_s / new_s:.2f}x; identical rankings: {bool((old_i == new_i).all())}")


if __name__ == "__main__":
    main()
