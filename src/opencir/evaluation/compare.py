"""Paired comparison of two result sets on the same queries: per-query metrics, paired
bootstrap confidence intervals and paired permutation p-values.

Per-query values come from the benchmark's own protocol object applied to one query at a
time, so their mean over a part is exactly the official metric (R@k, Rsubset@k, mAP@k
and the averaged summaries are all means over queries). A multi-part benchmark
(FashionIQ categories) is resampled within each part and its ``avg/`` metrics are the
mean over parts, as in the official tables.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.types import CIRDataset, Triplet
from .protocols import GALLERY_CONVENTION_KEY, FractionRecallProtocol, has_ground_truth, protocol_labels, validate_rankings

Rankings = Mapping[str, Sequence[str]]


@dataclass
class PartScores:
    """Per-query metric values (percent) of one evaluation part: ``values[metric][i]`` is
    the value of ``query_ids[i]``."""

    query_ids: list[str]
    values: dict[str, np.ndarray]


def scored_triplets(part: CIRDataset) -> list[Triplet]:
    """The queries a part's protocol averages over (all of them for ImageNet's fraction
    recall, those with a ground truth otherwise)."""
    if isinstance(part.protocol, FractionRecallProtocol):
        return list(part.triplets)
    return [t for t in part.triplets if t.target_ids]


def per_query_scores(dataset: CIRDataset, rankings: Rankings, subset_rankings: Rankings | None = None) -> dict[str, PartScores]:
    """Per evaluation part, each query's official metric values (protocol on one query)."""
    out: dict[str, PartScores] = {}
    for name, part in dataset.evaluation_parts().items():
        if part.protocol is None or not has_ground_truth(part):
            raise ValueError(f"{part.name}/{part.split} has no ground truth to compare against")
        validate_rankings(part, rankings)
        triplets = scored_triplets(part)
        rows = [part.protocol.evaluate([t], rankings, subset_rankings) for t in triplets]
        out[name] = PartScores([t.query_id for t in triplets],
                               {m: np.array([r[m] for r in rows], dtype=np.float64) for m in rows[0]})
    return out


def _part_means(parts: Sequence[np.ndarray], index: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Mean over parts of each part's (resampled) mean; arrays of shape (R, n_part) or (n_part,)."""
    if index is None:
        return np.mean([p.mean(axis=-1) for p in parts], axis=0)
    return np.mean([p[i].mean(axis=-1) for p, i in zip(parts, index)], axis=0)


def paired_bootstrap_ci(
    diffs: Sequence[np.ndarray], n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean paired difference: queries resampled with
    replacement within each part; the statistic is the mean over parts of the part means."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    rng = np.random.default_rng(seed)
    index = [rng.integers(0, len(d), size=(n_resamples, len(d))) for d in diffs]
    stats = _part_means(diffs, index)
    alpha = (1 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def paired_permutation_p(diffs: Sequence[np.ndarray], n_permutations: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value of "no difference": each query's pair is swapped at random (the
    sign of its difference flipped); ``(1 + #|stat| >= |observed|) / (1 + n)``."""
    rng = np.random.default_rng(seed + 1)
    observed = abs(float(_part_means(diffs)))
    flipped = _part_means([d * rng.choice([-1.0, 1.0], size=(n_permutations, len(d))) for d in diffs])
    extreme = int(np.sum(np.abs(flipped) >= observed - 1e-12))
    return (1 + extreme) / (1 + n_permutations)


@dataclass
class MetricComparison:
    """One metric of one group: A, B, B - A with its interval, and the p-value."""

    group: str
    metric: str
    a: float
    b: float
    diff: float
    low: float
    high: float
    p_value: float
    queries: int


def _groups(scores: Mapping[str, PartScores], group_of: Callable[[str], Sequence[str]] | None) -> dict[str, dict[str, np.ndarray]]:
    """Query positions per group: ``all`` (every part), each part, and each label of ``group_of``."""
    groups: dict[str, dict[str, np.ndarray]] = {"all": {p: np.arange(len(s.query_ids)) for p, s in scores.items()}}
    if len(scores) > 1:
        for p, s in scores.items():
            groups[p] = {p: np.arange(len(s.query_ids))}
    if group_of is not None:
        labelled: dict[str, dict[str, list[int]]] = {}
        for p, s in scores.items():
            for i, qid in enumerate(s.query_ids):
                for label in group_of(qid):
                    labelled.setdefault(label, {}).setdefault(p, []).append(i)
        for label in sorted(labelled):
            groups[label] = {p: np.array(rows) for p, rows in labelled[label].items()}
    return groups


def compare_scores(
    a: Mapping[str, PartScores],
    b: Mapping[str, PartScores],
    group_of: Callable[[str], Sequence[str]] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[MetricComparison]:
    """Every metric of every group: B - A, paired bootstrap interval, permutation p-value."""
    if set(a) != set(b):
        raise ValueError(f"the two results have different evaluation parts: {sorted(a)} vs {sorted(b)}")
    for p in a:
        if a[p].query_ids != b[p].query_ids:
            raise ValueError(f"part {p or 'all'!r}: the two results do not rank the same queries")
    metrics = list(next(iter(a.values())).values)
    out = []
    for group, members in _groups(a, group_of).items():
        parts = [p for p in a if p in members]
        for m in metrics:
            xa = [a[p].values[m][members[p]] for p in parts]
            xb = [b[p].values[m][members[p]] for p in parts]
            diffs = [y - x for x, y in zip(xa, xb)]
            low, high = paired_bootstrap_ci(diffs, n_resamples, confidence, seed)
            out.append(MetricComparison(group, m, float(_part_means(xa)), float(_part_means(xb)),
                                        float(_part_means(diffs)), low, high,
                                        paired_permutation_p(diffs, n_resamples, seed),
                                        sum(len(d) for d in diffs)))
    return out


def compare_rankings(
    dataset: CIRDataset,
    rankings_a: Rankings,
    rankings_b: Rankings,
    subsets_a: Rankings | None = None,
    subsets_b: Rankings | None = None,
    group_of: Callable[[str], Sequence[str]] | None = None,
    **options: Any,
) -> list[MetricComparison]:
    """:func:`compare_scores` of two rankings of the same ``dataset`` queries."""
    return compare_scores(per_query_scores(dataset, rankings_a, subsets_a),
                          per_query_scores(dataset, rankings_b, subsets_b), group_of, **options)


def describe_evaluation(dataset: CIRDataset) -> dict[str, Any]:
    """What a result was measured under: dataset, split, per-part protocol (class and
    settings: reference removal, ks, subsets), gallery convention and size, query count."""
    parts = {}
    for name, part in dataset.evaluation_parts().items():
        protocol = part.protocol
        settings = dataclasses.asdict(protocol) if dataclasses.is_dataclass(protocol) else {}
        parts[name or "all"] = {
            "protocol": type(protocol).__name__,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
            "gallery_size": len(part.gallery_ids),
            "queries": len(part.triplets),
        }
    convention = protocol_labels(dataset).get(GALLERY_CONVENTION_KEY, "default")
    return {"dataset": dataset.name, "split": dataset.split, "gallery_convention": convention, "parts": parts}


def protocol_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys where two :func:`describe_evaluation` records differ, with both values."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += protocol_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} vs {vb!r}")
    return out


def check_same_protocol(a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str] = ("A", "B")) -> None:
    """Refuse to compare results made under different protocols or gallery conventions."""
    differences = protocol_differences(a, b)
    if differences:
        raise ValueError(
            f"{names[0]} and {names[1]} were not evaluated under the same protocol ({'; '.join(differences)}); "
            "re-evaluate both with the same dataset options to compare them")


def format_comparison(rows: Sequence[MetricComparison], confidence: float = 0.95, labels: tuple[str, str] = ("A", "B")) -> str:
    """A fixed-width table: group, metric, A, B, B - A, interval, p."""
    width = max([len(r.group) for r in rows] + [5]) + 2
    mwidth = max([len(r.metric) for r in rows] + [6]) + 2
    pct = f"{100 * confidence:g}% CI"
    lines = ["group".ljust(width) + "metric".ljust(mwidth) + f"{labels[0][:9]:>9} {labels[1][:9]:>9} {'B - A':>8} "
             f"{pct:>17} {'p':>7} {'n':>6}"]
    for r in rows:
        lines.append(r.group.ljust(width) + r.metric.ljust(mwidth) + f"{r.a:9.2f} {r.b:9.2f} {r.diff:+8.2f} "
                     f"{f'[{r.low:+.2f}, {r.high:+.2f}]':>17} {r.p_value:7.4f} {r.queries:6d}")
    return "\n".join(lines)
