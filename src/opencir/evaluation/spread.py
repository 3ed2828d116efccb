"""Seed spread: mean and sample standard deviation of metric tables over seeds (pure)."""
from __future__ import annotations

import statistics
from typing import Mapping, Sequence


def mean_and_std(tables: Sequence[Mapping[str, Mapping[str, float]]]) -> tuple[dict, dict]:
    """Per row and metric, the mean and the sample standard deviation over seeds (0 for
    one seed); non-numeric values (e.g. a gallery-convention label) are left out."""
    rows = list(tables[0])
    names = {r: [m for m, v in tables[0][r].items() if isinstance(v, (int, float))] for r in rows}
    mean = {r: {m: statistics.fmean(t[r][m] for t in tables) for m in names[r]} for r in rows}
    std = {r: {m: statistics.stdev([t[r][m] for t in tables]) if len(tables) > 1 else 0.0 for m in names[r]}
           for r in rows}
    return mean, std
