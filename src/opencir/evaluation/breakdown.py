"""Per-query groups for result breakdowns, registered by dataset name.

cir-shapes: modification type (``edit:add`` ... ``edit:move``) and ``held-out`` / ``seen``
shape-colour combinations. Evaluation parts (FashionIQ categories, ImageNet-R domains)
are groups of their own everywhere; CIRR's subset view is its protocol's ``Rsubset@k``.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from ..data.types import CIRDataset, Triplet
from ..registry import Registry

GroupFn = Callable[[Triplet], Sequence[str]]
BREAKDOWNS: Registry[GroupFn] = Registry("breakdown")


@BREAKDOWNS.register("cir-shapes")
def cir_shapes_groups(triplet: Triplet) -> list[str]:
    """``edit:<type>`` and ``held-out`` or ``seen``."""
    return [f"edit:{triplet.extra.get('edit', '?')}", "held-out" if triplet.extra.get("held_out") else "seen"]


def query_groups(dataset: CIRDataset) -> dict[str, list[str]]:
    """Group labels of every query id (empty lists for datasets without a breakdown)."""
    fn = BREAKDOWNS.get(dataset.name) if dataset.name in BREAKDOWNS.names() else None
    return {t.query_id: list(fn(t)) if fn else [] for t in dataset.triplets}


def group_means(query_ids: Sequence[str], values: Mapping[str, np.ndarray],
                groups: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """Per group label: ``queries`` and the mean of every per-query metric."""
    members: dict[str, list[int]] = {}
    for i, qid in enumerate(query_ids):
        for label in groups.get(qid, ()):
            members.setdefault(label, []).append(i)
    return {label: {"queries": len(rows), **{m: float(v[rows].mean()) for m, v in values.items()}}
            for label, rows in sorted(members.items())}
