"""Model evaluation: encode the gallery once, compose queries, rank, score with the protocol.

The same protocol objects score rankings files (``opencir eval-rankings``), so our models
and anyone else's are measured by one piece of code. Ranking is tiled
(``retrieval.exact.exact_top_k``): memory never holds a Q x N matrix.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..data.types import CIRDataset, Triplet
from ..methods.base import CIRMethod
from ..retrieval.exact import exact_top_k
from ..encoding.features import FeatureTable, Sharding, TextFeatureCache, encode_image_table
from ..encoding.precision import autocast, resolve_precision
from .protocols import aggregate_parts, has_ground_truth, protocol_labels


@dataclass
class EvalResult:
    """Metrics (percent; plus ``gallery_convention`` where a benchmark has several), and per
    query id the ranked gallery ids and subset rankings."""

    metrics: dict[str, float | str]
    rankings: dict[str, list[str]] = field(default_factory=dict)
    subset_rankings: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)
    """With ``evaluate(analysis=True)``: breakdowns and the shortcut analysis (``opencir.evaluation.shortcuts``)."""


@dataclass
class QueryEmbeddings:
    """Normalised query (Q, D) and gallery (N, D) embeddings of one evaluation part."""

    triplets: list[Triplet]
    queries: torch.Tensor
    gallery_ids: list[str]
    gallery: torch.Tensor
    table: FeatureTable | None = None


@torch.no_grad()
def embed_part(
    method: CIRMethod,
    dataset: CIRDataset,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    table: FeatureTable | None = None,
    text_cache: TextFeatureCache | None = None,
    precision: str = "fp32",
) -> QueryEmbeddings:
    """Gallery and query embeddings of one dataset part (every image encoded once).

    ``text_cache`` (frozen text towers) reuses text features across calls, e.g. the
    trainer's validation after every epoch. ``precision`` (resolved) applies to image and
    text encoding and composition; embeddings are float32."""
    method.eval()
    triplets = list(dataset.triplets)
    if table is None:
        table = encode_image_table(method, dataset, part_image_ids(dataset), cache_dir, batch_size, device, num_workers,
                                   precision)
    with autocast(precision, device):
        gallery = torch.cat(
            [
                method.embed_targets(table.gather(dataset.gallery_ids[i : i + batch_size], device)).float().cpu()
                for i in range(0, len(dataset.gallery_ids), batch_size)
            ]
        )
    rng = random.Random(0)
    texts = [method.query_text(dataset, t, False, rng) for t in triplets]
    encode_texts = text_cache if text_cache is not None else method.encode_texts
    # Batches of similar length: each text batch is trimmed after its longest text
    # (ClipBackbone.trim_padding), so sorting saves most of the padding; order is restored.
    order = sorted(range(len(triplets)), key=lambda row: len(texts[row]), reverse=True)
    queries: torch.Tensor | None = None
    for i in tqdm(range(0, len(order), batch_size), desc="compose queries", leave=False, disable=None):
        rows = order[i : i + batch_size]
        reference = table.gather([triplets[row].reference_id for row in rows], device)
        with autocast(precision, device):
            composed = method.compose(reference, encode_texts([texts[row] for row in rows])).float().cpu()
        if queries is None:
            queries = torch.empty(len(triplets), composed.shape[1], dtype=torch.float32)
        queries[torch.as_tensor(rows)] = composed
    if queries is None:
        queries = torch.empty(0, gallery.shape[1] if gallery.ndim == 2 else 0)
    return QueryEmbeddings(triplets, queries, list(dataset.gallery_ids), gallery, table)


def part_image_ids(dataset: CIRDataset) -> list[str]:
    """The images an evaluation part encodes: its gallery, then the references."""
    return list(dict.fromkeys([*dataset.gallery_ids, *(t.reference_id for t in dataset.triplets)]))


def subset_ranking(
    embeddings: QueryEmbeddings,
    row: int,
    ranking: Sequence[str],
    subset_ids: Sequence[str],
    excluded: str | None,
    position: dict[str, int],
) -> list[str]:
    """CIRR subset ranking derived from the global ``ranking`` (as the official code
    filters its global ranking to ``img_set.members``): members in their global order;
    members below the global cut follow by score, ties in gallery order (the order a
    full stable sort would give); an ``excluded`` reference comes last (its official
    score is -1e11)."""
    members = [m for m in dict.fromkeys(subset_ids) if m in position]
    listed, member_set = set(ranking), set(members)
    ordered = [i for i in ranking if i in member_set]
    rest = [m for m in members if m not in listed and m != excluded]
    if rest:
        rows = torch.tensor([position[m] for m in rest], dtype=torch.long)
        scores = (embeddings.gallery.index_select(0, rows) @ embeddings.queries[row]).tolist()
        ordered += [m for _, _, m in sorted(zip((-s for s in scores), (position[m] for m in rest), rest))]
    if excluded is not None and excluded in members:
        ordered.append(excluded)
    return ordered


def rank_part(
    embeddings: QueryEmbeddings, depth: int, exclude_reference: bool, with_subsets: bool
) -> tuple[dict[str, list[str]], dict[str, list[float]], dict[str, list[str]]]:
    """Top-``depth`` gallery ids per query (reference removed if asked) and the subset
    rankings derived from them (:func:`subset_ranking`)."""
    position = {image_id: row for row, image_id in enumerate(embeddings.gallery_ids)}
    exclude = None
    if exclude_reference:
        exclude = [[position[t.reference_id]] if t.reference_id in position else [] for t in embeddings.triplets]
    scores, indices = exact_top_k(embeddings.queries, embeddings.gallery, depth, exclude)
    rankings, ranking_scores, subsets = {}, {}, {}
    for row, t in enumerate(embeddings.triplets):
        valid = scores[row] > float("-inf")
        rankings[t.query_id] = [embeddings.gallery_ids[j] for j in indices[row][valid]]
        ranking_scores[t.query_id] = scores[row][valid].tolist()
        if with_subsets and t.subset_ids:
            excluded = t.reference_id if exclude_reference else None
            subsets[t.query_id] = subset_ranking(embeddings, row, rankings[t.query_id], t.subset_ids, excluded, position)
    return rankings, ranking_scores, subsets


def evaluate(
    method: CIRMethod,
    dataset: CIRDataset,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    keep_rankings: bool = False,
    text_cache: TextFeatureCache | None = None,
    precision: str = "fp32",
    analysis: bool = False,
    sharding: Sharding | None = None,
) -> EvalResult:
    """Official metrics of ``method`` on ``dataset`` (per part, plus ``avg/`` over parts);
    ``analysis`` adds breakdowns and, for composition methods, the shortcut analysis.

    ``precision``: ``fp32`` (default, exact), ``bf16``, ``fp16`` (CUDA) or ``auto``
    (``encoding.precision``). With a ``sharding`` of several ranks (every rank calls it)
    the image encoding is split over the ranks and rank 0 alone composes, ranks and
    scores; other ranks get no metrics."""
    precision = resolve_precision(precision, device)
    parts = dataset.evaluation_parts()
    per_part: dict[str, dict[str, float]] = {}
    result = EvalResult(metrics={})
    table: FeatureTable | None = None
    for part_name, part in parts.items():
        protocol = part.protocol
        if protocol is None:
            raise ValueError(f"{part.name}/{part.split} has no evaluation protocol")
        needed = {*part.gallery_ids, *(t.reference_id for t in part.triplets)}
        if table is None or not needed.issubset(table.index):
            table = None  # parts sharing their images (ImageNet domains) reuse one encoding
        if sharding is not None and sharding.world_size > 1:
            if table is None:
                method.eval()
                table = encode_image_table(method, part, part_image_ids(part), cache_dir, batch_size, device,
                                           num_workers, precision, sharding=sharding)
            if sharding.rank != 0:
                continue
        embeddings = embed_part(method, part, batch_size, device, cache_dir, num_workers, table, text_cache, precision)
        rankings, scores, subsets = rank_part(
            embeddings, protocol.ranking_depth, protocol.exclude_reference, protocol.uses_subsets
        )
        if has_ground_truth(part):  # hidden test splits: rankings only (for submissions)
            per_part[part_name] = protocol.evaluate(part.triplets, rankings, subsets or None)
        if keep_rankings or analysis:
            result.rankings.update(rankings)
            result.subset_rankings.update(subsets)
            result.scores.update(scores)
        table = embeddings.table
    result.metrics = {**aggregate_parts(per_part), **protocol_labels(dataset)} if per_part else {}
    if analysis and per_part:
        from .shortcuts import analyze

        result.analysis = analyze(method, dataset, result.rankings, result.subset_rankings or None, batch_size, device,
                                  cache_dir, precision=precision)
    return result


def select_score(metrics: dict[str, float | str], names: Sequence[str]) -> float:
    """Sum of the named metrics: the model-selection score (e.g. TG-CIR's sum of 7 CIRR metrics)."""
    missing = [n for n in names if n not in metrics or isinstance(metrics[n], str)]
    if missing:
        raise KeyError(f"selection metrics {missing} not among {sorted(metrics)}")
    return sum(metrics[n] for n in names)
