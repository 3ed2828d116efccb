"""Speed and memory of the evaluation protocols from cached features.

Two cases, both with random L2-normalised vectors standing in for cached features:

* CIRR val: 4,181 queries x 2,297 gallery images, reference removed, R@1/5/10/50,
  R_subset@1/2/3 and Avg (goal < 1 s);
* a CIRCO-sized gallery: 220 queries x 123,403 images, mAP@5/10/25/50 (goal < 5 s).

Our path is the evaluator's: ``rank_part`` (chunked ``exact_top_k``, subset rankings)
then the protocol object. The reference, measured in the same run, is the plain way of
research code: a full Q x N similarity matrix, a full argsort and a Q x N array of id
strings. Both must give the same metrics. Peak memory is the resident-set growth
during each call (sampled from /proc), so it includes torch/numpy buffers.

    OMP_NUM_THREADS=1 python benchmarks/bench_protocols.py [--dim 512] [--repeat 3]
"""
from __future__ import annotations

import argparse
import random
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from opencir.data.types import Triplet
from opencir.evaluation.evaluator import QueryEmbeddings, rank_part
from opencir.evaluation.protocols import MAPProtocol, RecallProtocol


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


class PeakMemory:
    """Peak resident-set growth while the block runs (a sampling thread, 1 ms period)."""

    def __enter__(self) -> "PeakMemory":
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(fn: Callable[[], dict], repeat: int) -> tuple[float, float, dict]:
    """Best wall time (s) over ``repeat`` runs, peak memory growth (MB) of the first, result."""
    with PeakMemory() as mem:
        start = time.perf_counter()
        result = fn()
        best = time.perf_counter() - start
    for _ in range(repeat - 1):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best, mem.growth_mb, result


def unit_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def make_case(queries: int, gallery: int, dim: int, targets: int, subsets: bool, seed: int) -> QueryEmbeddings:
    """Triplets over ids ``g0..``; targets are made a little similar to their queries so
    that metrics are not all zero."""
    rng = random.Random(seed)
    ids = [f"img-{i:06d}" for i in range(gallery)]
    g = unit_vectors(gallery, dim, seed)
    triplets, rows = [], []
    for qi in range(queries):
        ref = rng.randrange(gallery)
        tg = rng.sample(range(gallery), targets)
        members = tuple(ids[j] for j in ([ref, tg[0], *rng.sample(range(gallery), 4)] if subsets else []))
        triplets.append(Triplet(str(qi), ids[ref], ("t",), tuple(ids[j] for j in tg), members))
        rows.append(g[tg[0]] * 0.2 + g[ref] * 0.2)
    q = torch.stack(rows) + unit_vectors(queries, dim, seed + 1)
    q = q / q.norm(dim=1, keepdim=True)
    return QueryEmbeddings(triplets, q, ids, g)


def ours(case: QueryEmbeddings, protocol) -> dict:
    rankings, _scores, subsets = rank_part(case, protocol.ranking_depth, protocol.exclude_reference, protocol.uses_subsets)
    return protocol.evaluate(case.triplets, rankings, subsets or None)


def naive(case: QueryEmbeddings, protocol) -> dict:
    """Full Q x N scores, full argsort, Q x N string matrix (the plain reference)."""
    names = np.array(case.gallery_ids)
    sims = (case.queries @ case.gallery.T).numpy()
    order = np.argsort(-sims, axis=1, kind="stable")
    ranked = names[order]  # Q x N strings
    rankings, subsets = {}, {}
    for t, row in zip(case.triplets, ranked):
        kept = row[row != t.reference_id] if protocol.exclude_reference else row
        rankings[t.query_id] = kept[: protocol.ranking_depth].tolist()
        if protocol.uses_subsets:
            subsets[t.query_id] = kept[np.isin(kept, list(t.subset_ids))].tolist()
    return protocol.evaluate(case.triplets, rankings, subsets or None)


def run_case(title: str, case: QueryEmbeddings, protocol, goal_s: float, repeat: int) -> None:
    t_ours, m_ours, r_ours = measure(lambda: ours(case, protocol), repeat)
    t_naive, m_naive, r_naive = measure(lambda: naive(case, protocol), repeat)
    same = all(abs(r_ours[k] - r_naive[k]) < 1e-9 for k in r_ours) and set(r_ours) == set(r_naive)
    q, n = case.queries.shape[0], len(case.gallery_ids)
    print(f"\n{title}: {q} queries x {n} gallery, dim {case.queries.shape[1]}")
    print(f"  opencir   {t_ours:7.3f} s   peak +{m_ours:8.1f} MB   goal < {goal_s:g} s: {'met' if t_ours < goal_s else 'MISSED'}")
    print(f"  reference {t_naive:7.3f} s   peak +{m_naive:8.1f} MB   (full matrix + argsort + Q x N strings)")
    print(f"  ratio     {t_naive / t_ours:7.1f}x faster, {m_naive / max(m_ours, 1e-6):.1f}x less memory; same metrics: {same}")
    print("  metrics  ", {k: round(v, 2) for k, v in r_ours.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--circo-gallery", type=int, default=123_403)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {Path(__file__).name}")
    cirr = make_case(4181, 2297, args.dim, targets=1, subsets=True, seed=0)
    run_case(
        "CIRR val (R@k, Rsubset@k, Avg)",
        cirr,
        RecallProtocol(ks=(1, 5, 10, 50), exclude_reference=True, subset_ks=(1, 2, 3), averages={"Avg": ["R@5", "Rsubset@1"]}),
        1.0,
        args.repeat,
    )
    del cirr
    circo = make_case(220, args.circo_gallery, args.dim, targets=5, subsets=False, seed=1)
    run_case("CIRCO-sized (mAP@k)", circo, MAPProtocol(ks=(5, 10, 25, 50), exclude_reference=False, recall_ks=(5, 10, 25, 50)), 5.0, args.repeat)


if __name__ == "__main__":
    main()
