"""Meeting a recall target: tune an approximate index's search knob against exact search.

``tune_index(index_dir, target_recall)`` draws a held-out sample of the index's own stored
vectors as queries, computes their exact top-``k`` (each query's own image excluded)
segment by segment over the stored vectors, then searches the index at increasing values
of its knob (``nprobe`` for IVF, ``ef_search`` for HNSW, ``nprobe`` / ``ef`` in Milvus):
doubling until recall@k reaches the target, then bisecting down to the smallest value
that still does. "Reaches" means with confidence: the mean recall over the sample minus
``CONFIDENCE_Z`` standard errors (a one-sided 95% bound) must be at or above the target,
so that fresh queries like the sample meet it too, not just the sample that chose the
value. The chosen value becomes the index's search-time default, and the measured curve
(value, recall, p50 latency of single queries, recall bound) is stored in the manifest
under ``tuning`` so that a search can ask for another target (``params_for_recall``)
without tuning again.

The sample stands in for real queries: composed queries come from another encoder path
and can be harder or easier than gallery vectors, so the achieved recall is reported as
measured on the catalogue, not promised for every workload.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .rerank import rescore
from .store import DATA, IndexStore

DEFAULT_SAMPLE = 500
LATENCY_QUERIES = 100
CONFIDENCE_Z = 1.645


@dataclass
class TuningPoint:
    """Recall@k (mean over the sample, and its lower confidence bound) and single-query
    p50 latency at one knob value."""

    value: int
    recall: float
    p50_ms: float
    low: float


@dataclass
class TuningReport:
    """What ``tune_index`` measured and chose."""

    target_recall: float
    k: int
    sample: int
    knob: str | None
    chosen: int | None
    recall: float
    p50_ms: float
    exact_p50_ms: float
    met: bool
    curve: list[TuningPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["curve"] = [[p.value, round(p.recall, 4), round(p.p50_ms, 3), round(p.low, 4)] for p in self.curve]
        return out


def check_target(target: float) -> float:
    """A recall target in (0, 1]; ValueError otherwise."""
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < float(target) <= 1:
        raise ValueError(f"target recall must be a number in (0, 1], got {target!r}")
    return float(target)


def exact_neighbours(store: IndexStore, queries: np.ndarray, self_keys: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) keys of the exact top-``k`` live images per query, ``self_keys[i]`` excluded,
    computed one stored segment at a time (memory: Q x segment rows)."""
    records = store.records
    segments = np.asarray(records.segments, dtype=np.int64)
    rows = np.asarray(records.rows, dtype=np.int64)
    keys = np.asarray(records.keys, dtype=np.int64)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_keys = np.full((len(queries), k), -1, dtype=np.int64)
    for number, name in enumerate(store.manifest["segments"]):
        live = np.flatnonzero(segments == number)
        if len(live) == 0:
            continue
        data = np.load(store.directory / DATA / name, mmap_mode="r")
        for start in range(0, len(live), 65536):
            chunk = live[start : start + 65536]
            scores = queries @ np.asarray(data[rows[chunk]]).T
            chunk_keys = keys[chunk]
            scores[chunk_keys[None, :] == self_keys[:, None]] = -np.inf
            merged_scores = np.concatenate([best_scores, scores], axis=1)
            merged_keys = np.concatenate([best_keys, np.broadcast_to(chunk_keys, scores.shape)], axis=1)
            top = np.argpartition(-merged_scores, k - 1, axis=1)[:, :k] if merged_scores.shape[1] > k else \
                np.broadcast_to(np.arange(merged_scores.shape[1]), (len(queries), merged_scores.shape[1]))
            best_scores = np.take_along_axis(merged_scores, top, axis=1)
            best_keys = np.take_along_axis(merged_keys, top, axis=1)
    return best_keys


def search_keys(store: IndexStore, queries: np.ndarray, k: int, params: Mapping[str, Any] | None) -> np.ndarray:
    """Top-``k`` keys as the store gets them (with exact re-ranking when the backend asks for it)."""
    depth = store.backend.rerank_depth(k)
    _, found = store.backend.search(queries, depth or k, params=params)
    if depth:
        _, found = rescore(store, queries, found)
    return found[:, :k]


def _search(store: IndexStore, queries: np.ndarray, self_keys: np.ndarray, k: int,
            params: Mapping[str, Any] | None) -> np.ndarray:
    """Top-k keys with each query's own key dropped (searched k + 1 deep)."""
    found = search_keys(store, queries, k + 1, params)
    return np.array([[key for key in row if key != own][:k] for row, own in zip(found.tolist(), self_keys.tolist())],
                    dtype=object)


def _recall(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean recall@k over the queries and its lower confidence bound."""
    per_query = np.array([len(set(f) & set(t.tolist()) - {-1}) / max(1, int((t >= 0).sum()))
                          for f, t in zip(found, truth)])
    mean = float(per_query.mean())
    error = float(per_query.std(ddof=1) / np.sqrt(len(per_query))) if len(per_query) > 1 else 0.0
    return mean, mean - CONFIDENCE_Z * error


def _p50_ms(store: IndexStore, queries: np.ndarray, k: int, params: Mapping[str, Any] | None) -> float:
    times = []
    search_keys(store, queries[:1], k + 1, params)  # warm-up
    for row in range(min(LATENCY_QUERIES, len(queries))):
        start = time.perf_counter()
        search_keys(store, queries[row : row + 1], k + 1, params)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def tune_backend(store: IndexStore, target_recall: float, k: int = 10, sample: int = DEFAULT_SAMPLE,
                 seed: int = 0) -> TuningReport:
    """Measure and choose the smallest knob value whose recall@k on a sample reaches the target."""
    target_recall = check_target(target_recall)
    if k < 1 or sample < 1:
        raise ValueError(f"k and sample must be >= 1, got k={k}, sample={sample}")
    backend = store.backend
    if len(store) <= k:
        raise ValueError(f"the index holds {len(store)} images; tuning recall@{k} needs more than {k}")
    rng = np.random.default_rng(seed)
    chosen_rows = np.sort(rng.choice(len(store), size=min(sample, len(store)), replace=False))
    self_keys = np.asarray(store.records.keys, dtype=np.int64)[chosen_rows]
    queries = store.vectors_of_keys(self_keys)
    start = time.perf_counter()
    truth = exact_neighbours(store, queries, self_keys, k)
    exact_ms = 1000 * (time.perf_counter() - start) / len(queries)
    knob = backend.search_knob(k)
    if knob is None:  # exact search: nothing to tune
        p50 = _p50_ms(store, queries, k, None)
        recall, _ = _recall(_search(store, queries, self_keys, k, None), truth)
        return TuningReport(target_recall, k, len(queries), None, None, recall, p50, exact_ms, recall >= target_recall)
    curve: dict[int, TuningPoint] = {}

    def measure(value: int) -> TuningPoint:
        if value not in curve:
            params = {knob.name: value}
            recall, low = _recall(_search(store, queries, self_keys, k, params), truth)
            curve[value] = TuningPoint(value, recall, _p50_ms(store, queries, k, params), low)
        return curve[value]

    low, value = None, knob.low
    while measure(value).low < target_recall and value < knob.high:
        low, value = value, min(knob.high, 2 * value)
    high = value
    if measure(high).low >= target_recall:  # bisect between the last miss and the first hit
        while low is not None and high - low > max(1, high // 16):
            middle = (low + high) // 2
            if measure(middle).low >= target_recall:
                high = middle
            else:
                low = middle
    best = curve[high]
    points = sorted(curve.values(), key=lambda p: p.value)
    return TuningReport(target_recall, k, len(queries), knob.name, best.value, best.recall, best.p50_ms, exact_ms,
                        best.low >= target_recall, points)


def tune_index(index_dir: str | Path, target_recall: float, k: int = 10, sample: int = DEFAULT_SAMPLE,
               seed: int = 0) -> TuningReport:
    """Tune the index in ``index_dir`` and store the chosen parameter and the curve in it."""
    with IndexStore.open(index_dir, writable=True) as store:
        report = tune_backend(store, target_recall, k, sample, seed)
        params = {report.knob: report.chosen} if report.knob is not None else {}
        store.set_search_options(store.backend.options_with(params), report.to_dict())
        return report


def params_for_recall(manifest: Mapping[str, Any], target_recall: float) -> dict[str, Any]:
    """Search parameters reaching ``target_recall`` according to the index's stored curve:
    the smallest measured value whose recall bound is at or above the target (the largest
    measured when none is)."""
    target_recall = check_target(target_recall)
    tuning = manifest.get("tuning")
    if not tuning:
        if manifest["backend"]["name"] == "exact":
            return {}
        raise ValueError("this index has no recall curve; tune it first: "
                         "opencir index --out IDX --target-recall R")
    if tuning.get("knob") is None:
        return {}
    curve = sorted(tuning["curve"])
    for point in curve:
        if point[-1] >= target_recall:  # the bound (older curves end with the mean)
            return {tuning["knob"]: int(point[0])}
    return {tuning["knob"]: int(curve[-1][0])}
