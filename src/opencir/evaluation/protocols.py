"""Protocol objects: which metrics a benchmark split reports, computed from rankings.

A protocol removes the reference from each ranking when the benchmark says so, so a
rankings file of any model is scored exactly like our own evaluator's output.
:func:`evaluate_rankings` is the one entry point for both: it scores each evaluation
part of a dataset (FashionIQ categories, ImageNet domains) and averages over parts
with :func:`aggregate_parts`, the same function the model evaluator uses.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.types import CIRDataset, Triplet
from .metrics import fraction_recall_at_k, map_at_k, mean_of, recall_at_k, subset_recall_at_k

SERVER_KEYS = ("version", "metric")
"""Header keys of the CIRR server JSON files; ignored when reading rankings."""


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


def _scored(triplets: Sequence[Triplet]) -> list[Triplet]:
    scored = [t for t in triplets if t.target_ids]
    if not scored:
        raise ValueError("no query of this split has a ground truth (hidden test split?)")
    return scored


def subset_lists(
    triplets: Sequence[Triplet], source: Mapping[str, Sequence[str]], depth: int
) -> list[list[str]]:
    """CIRR subset rankings: ``source`` order restricted to ``subset_ids`` minus the reference.

    ``source`` may be a global ranking cut at some depth: members below the cut rank
    after all listed ones, so a hit at k is still decided unless the target is absent
    and fewer than ``depth`` members are listed; that case raises (rank deeper or pass
    subset rankings).
    """
    out = []
    for t in triplets:
        if t.query_id not in source:
            raise KeyError(f"subset rankings have no entry for query id {t.query_id!r}")
        members = set(t.subset_ids) - {t.reference_id}
        kept = [i for i in source[t.query_id] if i in members]
        kept = list(dict.fromkeys(kept))
        undecided = not (set(t.target_ids) & set(kept)) and len(kept) < min(depth, len(members))
        if undecided:
            raise ValueError(
                f"query {t.query_id!r}: its ranking lists only {len(kept)} of the {len(members)} img_set members "
                f"(reference excluded) and not the target, so Rsubset@{depth} is undecided; rank the whole "
                "gallery or give subset rankings"
            )
        out.append(kept)
    return out


@dataclass
class RecallProtocol:
    """Hit-rate R@k, optionally CIRR-style subset recall and averaged summary metrics.

    ``averages`` maps a summary name to the metric names it averages, e.g.
    ``{"Avg": ["R@5", "Rsubset@1"]}`` for CIRR or ``{"Avg": ["R@1", "R@10", "R@50"]}`` for Shoes.
    ``gallery_convention`` names how the gallery was built when a benchmark has several
    incomparable ones (FashionIQ); metrics dicts carry it (:func:`protocol_labels`).
    """

    ks: tuple[int, ...] = (1, 5, 10, 50)
    exclude_reference: bool = True
    subset_ks: tuple[int, ...] = ()
    averages: dict[str, list[str]] = field(default_factory=dict)
    gallery_convention: str | None = None

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
        scored = _scored(triplets)
        ranked = ranked_lists(scored, rankings, self.exclude_reference, self.ranking_depth)
        metrics = recall_at_k(ranked, [set(t.target_ids) for t in scored], self.ks)
        if self.subset_ks:
            source = subset_rankings if subset_rankings is not None else rankings
            sub_ranked = subset_lists(scored, source, max(self.subset_ks))
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
    """Multi-ground-truth mAP@k (CIRCO), plus recall of the first ground truth at
    ``recall_ks`` (CIRCO's own script reports it next to mAP)."""

    ks: tuple[int, ...] = (5, 10, 25, 50)
    exclude_reference: bool = True
    uses_subsets: bool = False
    recall_ks: tuple[int, ...] = ()

    @property
    def ranking_depth(self) -> int:
        return max((*self.ks, *self.recall_ks))

    def evaluate(
        self,
        triplets: Sequence[Triplet],
        rankings: Mapping[str, Sequence[str]],
        subset_rankings: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, float]:
        scored = _scored(triplets)
        ranked = ranked_lists(scored, rankings, self.exclude_reference, self.ranking_depth)
        metrics = map_at_k(ranked, [set(t.target_ids) for t in scored], self.ks)
        if self.recall_ks:
            metrics.update(recall_at_k(ranked, [{t.target_ids[0]} for t in scored], self.recall_ks))
        return metrics


@dataclass
class FractionRecallProtocol:
    """Pic2Word's ImageNet recall: (#relevant in top k) / (#relevant + epsilon), averaged
    over **all** queries; a query without any relevant gallery item scores 0 (as in the
    official code, whose epsilon is 1e-5). The reference is not removed."""

    ks: tuple[int, ...] = (10, 50)
    exclude_reference: bool = False
    epsilon: float = 1e-5
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
        if not triplets:
            raise ValueError("no queries to evaluate")
        ranked = ranked_lists(triplets, rankings, self.exclude_reference, self.ranking_depth)
        relevant = [set(t.target_ids) for t in triplets]
        return fraction_recall_at_k(ranked, relevant, self.ks, empty_is_zero=True, epsilon=self.epsilon)


# ----------------------------------------------------------------------------- datasets


def aggregate_parts(per_part: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """One part: its metrics as they are. Several: ``"<part>/<metric>"`` for each, plus
    ``"avg/<metric>"``, the plain mean over parts (FashionIQ "Avg R@10")."""
    if not per_part:
        return {}
    if len(per_part) == 1:
        return dict(next(iter(per_part.values())))
    metrics: dict[str, float] = {}
    for name, part in per_part.items():
        metrics.update({f"{name}/{key}": value for key, value in part.items()})
    for key in next(iter(per_part.values())):
        metrics[f"avg/{key}"] = sum(part[key] for part in per_part.values()) / len(per_part)
    return metrics


GALLERY_CONVENTION_KEY = "gallery_convention"
"""Key of a metrics dict naming the gallery convention (a string, not a metric)."""


def protocol_labels(dataset: CIRDataset) -> dict[str, str]:
    """``{"gallery_convention": name}`` when the dataset's protocol names one (FashionIQ:
    "full-val", "full-val-no-reference" or "val-split"), else ``{}``; added to every metrics
    dict so numbers of incomparable conventions are never mixed up."""
    names = {getattr(p.protocol, GALLERY_CONVENTION_KEY, None) for p in dataset.evaluation_parts().values()}
    names.discard(None)
    if len(names) > 1:
        raise ValueError(f"{dataset.name}/{dataset.split}: parts use different gallery conventions {sorted(names)}")
    return {GALLERY_CONVENTION_KEY: names.pop()} if names else {}


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics without their labels (``gallery_convention``): numbers only."""
    return {k: v for k, v in metrics.items() if not isinstance(v, str)}


def has_ground_truth(dataset: CIRDataset) -> bool:
    """Whether any query of ``dataset`` has a target (False on hidden test splits)."""
    return any(t.target_ids for t in dataset.triplets)


def validate_rankings(
    dataset: CIRDataset, rankings: Mapping[str, Sequence[str]], source: str = "rankings"
) -> None:
    """Check a rankings mapping against one dataset part before scoring it.

    Every query must be ranked, ids must be gallery ids without repeats, and each list
    must hold the protocol's depth after the reference is removed (or the whole gallery).
    """
    protocol = dataset.protocol
    if protocol is None:
        raise ValueError(f"{dataset.name}/{dataset.split} has no evaluation protocol")
    gallery = set(dataset.gallery_ids) if dataset.info.get("gallery_known", True) else None
    depth = protocol.ranking_depth
    for t in dataset.triplets:
        if t.query_id not in rankings:
            raise KeyError(f"{source}: no ranking for query id {t.query_id!r}")
        ids = rankings[t.query_id]
        if len(set(ids)) != len(ids):
            repeated = next(i for i in ids if list(ids).count(i) > 1)
            raise ValueError(f"{source}: ranking of query {t.query_id!r} lists {repeated!r} more than once")
        if gallery is not None:
            unknown = next((i for i in ids if i not in gallery), None)
            if unknown is not None:
                raise ValueError(
                    f"{source}: ranking of query {t.query_id!r} holds {unknown!r}, which is not in the "
                    f"{dataset.name}/{dataset.split} gallery"
                )
        kept = [i for i in ids if not (protocol.exclude_reference and i == t.reference_id)]
        if gallery is not None:
            available = len(gallery) - (1 if protocol.exclude_reference and t.reference_id in gallery else 0)
            need = min(depth, available)
        else:
            need = depth
        if len(kept) < need:
            raise ValueError(
                f"{source}: ranking of query {t.query_id!r} has {len(kept)} ids"
                f"{' after removing the reference' if protocol.exclude_reference else ''}; "
                f"the protocol needs the top {need}"
            )


def evaluate_rankings(
    dataset: CIRDataset,
    rankings: Mapping[str, Sequence[str]],
    subset_rankings: Mapping[str, Sequence[str]] | None = None,
    validate: bool = True,
) -> dict[str, float | str]:
    """Official metrics of ``dataset`` from ranked gallery ids keyed by query id.

    Each evaluation part is scored by its protocol, then :func:`aggregate_parts`; the
    :func:`protocol_labels` (FashionIQ's gallery convention) are added.
    """
    per_part: dict[str, dict[str, float]] = {}
    for name, part in dataset.evaluation_parts().items():
        if part.protocol is None:
            raise ValueError(f"{part.name}/{part.split} has no evaluation protocol")
        if not has_ground_truth(part):
            raise ValueError(
                f"{part.name}/{part.split} is a hidden test split (no ground truth); "
                "write a server submission with `opencir submission` instead"
            )
        if validate:
            validate_rankings(part, rankings)
        per_part[name] = part.protocol.evaluate(part.triplets, rankings, subset_rankings)
    return {**aggregate_parts(per_part), **protocol_labels(dataset)}


def parse_rankings(data: Any, source: str) -> dict[str, list[str]]:
    """``{"<query id>": [ranked ids...]}`` with ids as strings (ints are converted: CIRCO).

    The CIRR server header keys ``version``/``metric`` are skipped, so the server files
    themselves can be scored.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object {{query id: [ranked ids]}}, got {type(data).__name__}")
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        if key in SERVER_KEYS and isinstance(value, str):
            continue
        if not isinstance(value, list):
            raise ValueError(f"{source}: the ranking of query {key!r} must be a list, got {type(value).__name__}")
        bad = next((v for v in value if isinstance(v, bool) or not isinstance(v, (str, int))), None)
        if bad is not None:
            raise ValueError(f"{source}: the ranking of query {key!r} holds {bad!r}; ids must be strings or integers")
        out[str(key)] = [str(v) for v in value]
    return out


def read_rankings(path: str | Path) -> dict[str, list[str]]:
    """Read a rankings JSON file (see :func:`parse_rankings`); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rankings file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    return parse_rankings(data, str(path))
