"""Evaluation output folders: what ``opencir eval --out`` and the demo write, and what
``opencir compare`` and ``opencir report`` read.

Layout: ``metrics.json`` (the official metrics; ``{"metrics": ..., "shortcuts": ...,
"provenance": ...}`` when either of the last two is known, where ``shortcuts`` is the
shortcut analysis with its subset and rule named), ``analysis.json`` (when it ran: the
full analysis: shortcuts, baselines, breakdowns, paraphrase robustness),
``rankings.json``, ``subset_rankings.json`` (CIRR) and ``evaluation.json`` (dataset, root,
split, options and the protocol/gallery description that comparisons check).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..data.types import CIRDataset
from .compare import describe_evaluation
from .protocols import read_rankings

EVALUATION_FILE = "evaluation.json"
ANALYSIS_FILE = "analysis.json"


def write_eval_dir(out: str | Path, dataset: CIRDataset, metrics: Mapping[str, float], rankings: Mapping[str, Any],
                   subset_rankings: Mapping[str, Any] | None = None, analysis: Mapping[str, Any] | None = None,
                   options: Mapping[str, Any] | None = None, model: Mapping[str, Any] | None = None,
                   provenance: Mapping[str, Any] | None = None) -> Path:
    """Write one evaluation folder; returns it. metrics.json is ``{"metrics": ...,
    "shortcuts": ..., "provenance": ...}`` (each of the last two only when given: the
    shortcut summary comes from ``analysis``), else the bare metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"shortcuts": dict(analysis["shortcuts"])} if analysis and "shortcuts" in analysis else {}
    if provenance:
        extra["provenance"] = dict(provenance)
    record = {"metrics": dict(metrics), **extra} if extra else dict(metrics)
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    if analysis:
        (out / ANALYSIS_FILE).write_text(json.dumps(analysis, indent=2))
    (out / "rankings.json").write_text(json.dumps(rankings))
    if subset_rankings:  # CIRR: lets `opencir eval-rankings --subset-rankings` reproduce Rsubset
        (out / "subset_rankings.json").write_text(json.dumps(subset_rankings))
    (out / EVALUATION_FILE).write_text(json.dumps({
        "dataset": {"name": dataset.name, "root": str(dataset.root), "split": dataset.split,
                    "options": dict(options or {})},
        "protocol": describe_evaluation(dataset),
        "model": dict(model or {}),
    }, indent=2))
    return out


@dataclass
class EvalDir:
    """A read evaluation folder."""

    path: Path
    metrics: dict[str, float]
    analysis: dict[str, Any]
    rankings: dict[str, list[str]]
    subset_rankings: dict[str, list[str]] | None
    description: dict[str, Any] = field(default_factory=dict)


def is_eval_dir(path: str | Path) -> bool:
    return (Path(path) / "rankings.json").is_file() and (Path(path) / "metrics.json").is_file()


def read_eval_dir(path: str | Path) -> EvalDir:
    """Read an evaluation folder; clear errors naming the missing file."""
    path = Path(path)
    for name in ("metrics.json", "rankings.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not an evaluation folder: {name} is missing (write one with "
                                    "`opencir eval ... --out DIR`)")
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        if isinstance(metrics.get("metrics"), dict):  # with shortcuts and/or provenance
            metrics = metrics["metrics"]
        description = json.loads((path / EVALUATION_FILE).read_text()) if (path / EVALUATION_FILE).is_file() else {}
        analysis = json.loads((path / ANALYSIS_FILE).read_text()) if (path / ANALYSIS_FILE).is_file() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON ({err})") from None
    subsets = read_rankings(path / "subset_rankings.json") if (path / "subset_rankings.json").is_file() else None
    return EvalDir(path, metrics, analysis, read_rankings(path / "rankings.json"), subsets, description)
