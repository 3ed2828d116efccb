"""Protocol objects: which metrics a benchmark split reports, computed from rankings.

A protocol removes the reference from each ranking when the benchmark says so, so a
rankings file of any model is scored exactly like our own evaluator's output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..data.types import Triplet
from .metrics import map_at_k, mean_of, recall_at_k, subset_recall_at_k


def ranked_lists(
    triplets: Sequence[Triplet], rankings: Mapping[str, Sequence[str]], exclude_reference: bool, depth: int
) -> list[list[str]]:
    """The ranking of every triplet (reference removed if asked), cut to ``depth``.

    Fails with the first missing query id: every query must be ranked.
    """
    out = []
    for t in triplets:
        try:
            ids = rankings[t.query_id]
        except KeyError:
            raise KeyError(f"rankings have no entry for query id {t.query_id!r}") from None
        if exclude_reference:
            ids = [i for i in ids if i != t.reference_id]
        out.append(list(ids[:depth]))
    return out


@dataclass
class RecallProtocol:
    """Hit-rate R@k, optionally CIRR-style subset recall and averaged summary metrics.

    ``averages`` maps a summary name to the metric names it averages, e.g.
    ``{"Avg": ["R@5", "Rsubset@1"]}`` for CIRR or ``{"Avg": ["R@1", "R@10", "R@50"]}`` for Shoes.
    """

    ks: tuple[int, ...] = (1, 5, 10, 50)
    exclude_reference: bool = True
    subset_ks: tuple[int, ...] = ()
    averages: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ranking_depth(self) -> int:
        return max(self.ks)

    @property
    def uses_subsets(self) -> bool:
        return bool(self.subset_ks)

    def evaluate(
        self,
        triplets: Sequence[Triplet],
        rankings: Mapping[str, Sequence[str]],
        subset_rankings: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, float]:
        scored = [t for t in triplets if t.target_ids]
        if not scored:
            raise ValueError("no query of this split has a ground truth (hidden test split?)")
        ranked = ranked_lists(scored, rankings, self.exclude_reference, self.ranking_depth)
        metrics = recall_at_k(ranked, [set(t.target_ids) for t in scored], self.ks)
        if self.subset_ks:
            source = subset_rankings if subset_rankings is not None else rankings
            sub_ranked = [list(source[t.query_id]) if t.query_id in source else [] for t in scored]
            missing = [t.query_id for t, r in zip(scored, sub_ranked) if not r]
            if missing:
                raise KeyError(f"subset rankings have no entry for query id {missing[0]!r}")
            metrics.update(
                subset_recall_at_k(
                    sub_ranked,
                    [set(t.target_ids) for t in scored],
                    [set(t.subset_ids) for t in scored],
                    self.subset_ks,
                    exclude=[t.reference_id for t in scored],
                )
            )
        for name, keys in self.averages.items():
            metrics[name] = mean_of(metrics, keys)
        return metrics


@dataclass
class MAPProtocol:
    """Multi-ground-truth mAP@k (CIRCO); the reference is excluded from rankings."""

    ks: tuple[int, ...] = (5, 10, 25, 50)
    exclude_reference: bool = True
    uses_subsets: bool = False

    @property
    def ranking_depth(self) -> int:
        return max(self.ks)

    def evaluate(
        self,
        triplets: Sequence[Triplet],
        rankings: Mapping[str, Sequence[str]],
        subset_rankings: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, float]:
        scored = [t for t in triplets if t.target_ids]
        if not scored:
            raise ValueError("no query of this split has a ground truth (hidden test split?)")
        ranked = ranked_lists(scored, rankings, self.exclude_reference, self.ranking_depth)
        return map_at_k(ranked, [set(t.target_ids) for t in scored], self.ks)
