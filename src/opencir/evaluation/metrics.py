"""Pure retrieval metrics on ranked id lists. All values are percentages (0-100).

Every function takes ``ranked`` (one ranked list of gallery ids per query, best first)
and the ground truth per query; none of them knows about models or files.
"""
from __future__ import annotations

from typing import Collection, Sequence


def _check_lengths(ranked: Sequence[Sequence[str]], truth: Sequence[object]) -> None:
    if len(ranked) != len(truth):
        raise ValueError(f"{len(ranked)} rankings but {len(truth)} ground-truth entries")


def recall_at_k(
    ranked: Sequence[Sequence[str]], targets: Sequence[Collection[str]], ks: Sequence[int]
) -> dict[str, float]:
    """Hit rate: percentage of queries with at least one target in the top k."""
    _check_lengths(ranked, targets)
    if not ranked:
        raise ValueError("no queries to evaluate")
    out = {}
    for k in ks:
        hits = sum(1 for ids, gt in zip(ranked, targets) if any(i in gt for i in ids[:k]))
        out[f"R@{k}"] = 100.0 * hits / len(ranked)
    return out


def subset_recall_at_k(
    ranked: Sequence[Sequence[str]],
    targets: Sequence[Collection[str]],
    subsets: Sequence[Collection[str]],
    ks: Sequence[int],
    exclude: Sequence[str | None] | None = None,
) -> dict[str, float]:
    """CIRR R_subset@k: rank only the subset members (minus ``exclude[i]``), then hit rate."""
    _check_lengths(ranked, subsets)
    filtered = []
    for i, (ids, members) in enumerate(zip(ranked, subsets)):
        drop = exclude[i] if exclude is not None else None
        filtered.append([x for x in ids if x in members and x != drop])
    out = recall_at_k(filtered, targets, ks)
    return {key.replace("R@", "Rsubset@"): value for key, value in out.items()}


def average_precision_at_k(ids: Sequence[str], relevant: Collection[str], k: int) -> float:
    """CIRCO AP@k = (1/min(k, |G|)) * sum_{i<=k} P@i * rel(i), as a fraction."""
    if not relevant:
        raise ValueError("a query with no relevant items has no average precision")
    hits = 0
    total = 0.0
    for rank, image_id in enumerate(ids[:k], start=1):
        if image_id in relevant:
            hits += 1
            total += hits / rank
    return total / min(k, len(relevant))


def map_at_k(
    ranked: Sequence[Sequence[str]], relevant: Sequence[Collection[str]], ks: Sequence[int]
) -> dict[str, float]:
    """Mean average precision at each k (CIRCO), in percent."""
    _check_lengths(ranked, relevant)
    if not ranked:
        raise ValueError("no queries to evaluate")
    return {
        f"mAP@{k}": 100.0 * sum(average_precision_at_k(ids, rel, k) for ids, rel in zip(ranked, relevant)) / len(ranked)
        for k in ks
    }


def fraction_recall_at_k(
    ranked: Sequence[Sequence[str]],
    relevant: Sequence[Collection[str]],
    ks: Sequence[int],
    empty_is_zero: bool = False,
    epsilon: float = 0.0,
) -> dict[str, float]:
    """Pic2Word ImageNet recall: (#relevant in top k) / (#relevant + epsilon), averaged, in percent.

    A query with no relevant item raises, unless ``empty_is_zero``: then it scores 0 and
    still counts in the mean (Pic2Word's code does this: 0 / (0 + 1e-5) = 0).
    """
    _check_lengths(ranked, relevant)
    if not ranked:
        raise ValueError("no queries to evaluate")
    if not empty_is_zero and any(not rel for rel in relevant):
        raise ValueError("a query with no relevant items cannot be scored by fraction recall")
    out = {}
    for k in ks:
        total = 0.0
        for ids, rel in zip(ranked, relevant):
            if rel:
                total += sum(1 for i in ids[:k] if i in rel) / (len(rel) + epsilon)
        out[f"R@{k}"] = 100.0 * total / len(ranked)
    return out


def mean_of(metrics: dict[str, float], keys: Sequence[str]) -> float:
    """Arithmetic mean of the named metrics (e.g. CIRR Avg = mean(R@5, Rsubset@1))."""
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise KeyError(f"metrics {missing} are missing; have {sorted(metrics)}")
    return sum(metrics[k] for k in keys) / len(keys)
