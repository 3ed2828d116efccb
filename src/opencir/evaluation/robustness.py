"""Paraphrase robustness: the same queries with reworded modification texts.

A dataset with a registered paraphraser (cir-shapes: generated templates per edit type,
``opencir.data.synthetic.paraphrase_templates``) is re-scored once per template set; the
images are encoded once. Reported: the metrics of each set (set 0 is the original
wording) and their spread (standard deviation, min, max) per metric.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.synthetic import paraphrase_templates, paraphrased
from ..data.types import CIRDataset
from ..methods.base import CIRMethod
from ..registry import Registry
from .evaluator import embed_part, rank_part

Paraphraser = Callable[[CIRDataset, int], CIRDataset]
PARAPHRASERS: Registry[Paraphraser] = Registry("paraphraser")
PARAPHRASERS.register("cir-shapes")(paraphrased)


def has_paraphrases(dataset: CIRDataset) -> bool:
    return dataset.name in PARAPHRASERS.names() and not dataset.parts


@torch.no_grad()
def paraphrase_robustness(
    method: CIRMethod,
    dataset: CIRDataset,
    variants: int = 5,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Metrics of ``method`` under ``variants`` wordings of every query and their spread."""
    from ..encoding.precision import resolve_precision

    precision = resolve_precision(precision, device)
    if not has_paraphrases(dataset):
        raise ValueError(f"no paraphraser for dataset {dataset.name!r}; available: {', '.join(PARAPHRASERS.names())}")
    if variants < 2:
        raise ValueError(f"paraphrase robustness needs at least 2 variants, got {variants}")
    make = PARAPHRASERS.get(dataset.name)
    protocol = dataset.protocol
    table = None
    per_variant: list[dict[str, float]] = []
    examples: list[str] = []
    for j in range(variants):
        variant = make(dataset, j)
        embeddings = embed_part(method, variant, batch_size, device, cache_dir, 0, table, precision=precision)
        table = embeddings.table
        rankings, _, subsets = rank_part(embeddings, protocol.ranking_depth, protocol.exclude_reference,
                                         protocol.uses_subsets)
        per_variant.append(protocol.evaluate(variant.triplets, rankings, subsets or None))
        examples.append(variant.triplets[0].captions[0])
    spread = {m: {"std": statistics.stdev([v[m] for v in per_variant]), "min": min(v[m] for v in per_variant),
                  "max": max(v[m] for v in per_variant), "mean": statistics.fmean(v[m] for v in per_variant)}
              for m in per_variant[0]}
    return {"variants": per_variant, "spread": spread, "example_texts": examples,
            "templates_per_edit": len(paraphrase_templates("add")),
            "rule": "variant j rewords every query with template j of its edit type (variant 0 = original wording)"}
