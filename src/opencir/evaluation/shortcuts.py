"""Shortcut and composition analysis of a composition method's evaluation.

The image-only and text-only baselines are scored on the **same backbone** (the method's
own, fine-tuned or not; the same preprocessing; the dataset's plain query text). Per
query, a single modality *solves* the query at k when its ranking has a target in the top
k (per-query R@k > 0). Reported at every R@k of the protocol: the fraction of queries
each modality solves, the **composition-only subset** (queries neither solves) with the
method's recall on it, and the composition gain R@k(method) - max(R@k(image-only),
R@k(text-only)). Also per-group breakdowns (``opencir.evaluation.breakdown``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..data.types import CIRDataset
from ..methods.base import CIRMethod
from .breakdown import group_means, query_groups
from .compare import PartScores, per_query_scores

SINGLE_MODALITY = ("image-only", "text-only")
RULE = ("composition-only@k = queries for which neither image-only (query = the normalised reference image "
        "feature) nor text-only (query = the normalised modification-text feature), both on the method's own "
        "backbone, ranks a target in its top k; a modality solves a query at k when its per-query R@k > 0; "
        "composition gain@k = R@k(method) - max(R@k(image-only), R@k(text-only))")


def is_composition_method(method: CIRMethod) -> bool:
    """Every method except the single-modality baselines composes image and text (zero-shot
    methods too: they are trained on images alone but compose at query time)."""
    return method.name not in SINGLE_MODALITY


def _pooled(scores: Mapping[str, PartScores]) -> tuple[list[str], dict[str, np.ndarray]]:
    ids = [q for s in scores.values() for q in s.query_ids]
    metrics = list(next(iter(scores.values())).values)
    return ids, {m: np.concatenate([s.values[m] for s in scores.values()]) for m in metrics}


def _recall_ks(metrics: Mapping[str, np.ndarray]) -> list[str]:
    return [m for m in metrics if re.fullmatch(r"R@\d+", m)]


def shortcut_summary(method: Mapping[str, PartScores], image: Mapping[str, PartScores],
                     text: Mapping[str, PartScores]) -> dict[str, Any]:
    """The shortcut numbers (percent) from per-query scores of the method and both baselines."""
    ids, m = _pooled(method)
    _, i = _pooled(image)
    _, t = _pooled(text)
    at: dict[str, dict[str, float]] = {}
    for key in _recall_ks(m):
        img, txt = i[key] > 0, t[key] > 0
        only = ~(img | txt)
        solved = m[key] > 0
        at[key] = {
            "method_recall": 100.0 * float(solved.mean()),
            "image_only_solves": 100.0 * float(img.mean()),
            "text_only_solves": 100.0 * float(txt.mean()),
            "either_solves": 100.0 * float((img | txt).mean()),
            "composition_only_queries": int(only.sum()),
            "composition_only_fraction": 100.0 * float(only.mean()),
            "method_recall_composition_only": 100.0 * float(solved[only].mean()) if only.any() else float("nan"),
            "composition_gain": 100.0 * float(solved.mean() - max(img.mean(), txt.mean())),
        }
    return {"subset": "composition-only", "rule": RULE, "queries": len(ids), "at": at}


def _scores_of(method: CIRMethod, dataset: CIRDataset, batch_size: int, device, cache_dir,
               precision: str) -> tuple[dict, dict]:
    from .evaluator import evaluate

    result = evaluate(method, dataset, batch_size, device, cache_dir, keep_rankings=True, precision=precision)
    return per_query_scores(dataset, result.rankings, result.subset_rankings or None), result.metrics


def analyze(
    method: CIRMethod,
    dataset: CIRDataset,
    rankings: Mapping[str, list[str]],
    subset_rankings: Mapping[str, list[str]] | None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    paraphrase_variants: int = 5,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Breakdowns of ``method``'s rankings and, for composition methods, the shortcut
    analysis with the single-modality baselines on its backbone (their metrics included)
    and, where the dataset has a paraphraser, paraphrase robustness."""
    from ..methods.io import build_method
    from .robustness import has_paraphrases, paraphrase_robustness

    scores = per_query_scores(dataset, rankings, subset_rankings)
    groups = query_groups(dataset)
    for name, part in dataset.evaluation_parts().items():
        if name:
            for t in part.triplets:
                groups[t.query_id] = [name, *groups.get(t.query_id, [])]
    ids, values = _pooled(scores)
    out: dict[str, Any] = {"breakdown": {method.name: group_means(ids, values, groups)}}
    if not is_composition_method(method):
        return out
    baselines = {}
    for name in SINGLE_MODALITY:
        baseline = build_method(name, method.backbone, {"image_transform": method.requirements.image_transform})
        baselines[name] = _scores_of(baseline, dataset, batch_size, device, cache_dir, precision)
        b_ids, b_values = _pooled(baselines[name][0])
        out["breakdown"][name] = group_means(b_ids, b_values, groups)
    method.eval()
    out["shortcuts"] = shortcut_summary(scores, baselines["image-only"][0], baselines["text-only"][0])
    out["baselines"] = {name: metrics for name, (_, metrics) in baselines.items()}
    if paraphrase_variants >= 2 and has_paraphrases(dataset):
        out["paraphrases"] = paraphrase_robustness(method, dataset, paraphrase_variants, batch_size, device, cache_dir,
                                                   precision)
    return out


def format_shortcuts(summary: Mapping[str, Any]) -> str:
    """A short table of the shortcut analysis, one row per R@k."""
    lines = [f"shortcut analysis ({summary['queries']} queries; subset {summary['subset']!r}: {summary['rule']})",
             f"{'':7}{'method':>8}{'img-only':>10}{'txt-only':>10}{'comp-only n':>13}{'method on it':>14}{'gain':>8}"]
    for key, row in summary["at"].items():
        lines.append(f"{key:7}{row['method_recall']:8.2f}{row['image_only_solves']:10.2f}{row['text_only_solves']:10.2f}"
                     f"{row['composition_only_queries']:13d}{row['method_recall_composition_only']:14.2f}"
                     f"{row['composition_gain']:+8.2f}")
    return "\n".join(lines)
