"""Evaluation-server submission files for hidden test splits, built from rankings.

* CIRR test1 (spec 1.6): two JSON files, ``{"version": "rc2", "metric": "recall",
  "<pairid>": [top-50 names]}`` and the same with ``"metric": "recall_subset"`` and the
  top-3 ``img_set`` members. Keys are ``str(int(pairid))``, names have no extension and
  the reference is removed before taking the top k. Every test pairid must be present.
* CIRCO test: ``{"<query id>": [top-50 COCO image ids as integers]}`` for all 800 queries.

Writers are registered by dataset name in ``SUBMISSIONS``; each returns the files it
wrote. Rankings are ``{query id: [ranked image ids]}`` as the evaluator or
``opencir eval-rankings`` use them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..evaluation.protocols import subset_lists
from ..registry import Registry
from .types import CIRDataset

SubmissionWriter = Callable[..., list[Path]]
SUBMISSIONS: Registry[SubmissionWriter] = Registry("submission format")

CIRR_RECALL_DEPTH = 50
CIRR_SUBSET_DEPTH = 3
CIRCO_DEPTH = 50


def _write_json(out_dir: str | Path, files: Mapping[str, object]) -> list[Path]:
    """Write each ``{file name: content}`` as JSON into ``out_dir`` (created); the paths, in order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in files.items():
        path = out / name
        path.write_text(json.dumps(content))
        paths.append(path)
    return paths


def _strip_extension(name: str) -> str:
    for ext in (".png", ".jpg", ".jpeg"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _top(dataset: CIRDataset, rankings: Mapping[str, Sequence[str]], qid: str, reference: str, depth: int) -> list[str]:
    if qid not in rankings:
        raise KeyError(f"rankings have no entry for {dataset.name}/{dataset.split} query {qid!r}; every query must be ranked")
    top = [i for i in rankings[qid] if i != reference][:depth]
    needed = min(depth, len(dataset.gallery_ids) - 1) if dataset.gallery_ids else depth
    if len(top) < needed:
        raise ValueError(f"ranking of query {qid!r} has {len(top)} ids after removing the reference; the server needs {needed}")
    return top


def cirr_submission(
    dataset: CIRDataset,
    rankings: Mapping[str, Sequence[str]],
    subset_rankings: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, object], dict[str, object]]:
    """The two CIRR server dicts (recall, recall_subset) for every query of ``dataset``."""
    recall: dict[str, object] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, object] = {"version": "rc2", "metric": "recall_subset"}
    sub_lists = subset_lists(dataset.triplets, subset_rankings or rankings, CIRR_SUBSET_DEPTH)
    for t, members in zip(dataset.triplets, sub_lists):
        key = str(int(t.query_id))
        recall[key] = [_strip_extension(i) for i in _top(dataset, rankings, t.query_id, t.reference_id, CIRR_RECALL_DEPTH)]
        subset[key] = [_strip_extension(i) for i in members[:CIRR_SUBSET_DEPTH]]
    return recall, subset


@SUBMISSIONS.register("cirr")
def write_cirr_submission(
    dataset: CIRDataset,
    rankings: Mapping[str, Sequence[str]],
    out_dir: str | Path,
    subset_rankings: Mapping[str, Sequence[str]] | None = None,
    tag: str = "opencir",
) -> list[Path]:
    """Write ``recall_submission_<tag>.json`` and ``recall_subset_submission_<tag>.json``."""
    recall, subset = cirr_submission(dataset, rankings, subset_rankings)
    return _write_json(out_dir, {f"recall_submission_{tag}.json": recall, f"recall_subset_submission_{tag}.json": subset})


def circo_submission(dataset: CIRDataset, rankings: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
    """``{query id: [top-50 image ids as ints]}`` for every query, in the dataset's order."""
    exclude = bool(dataset.protocol and dataset.protocol.exclude_reference)
    out = {}
    for t in dataset.triplets:
        reference = t.reference_id if exclude else ""
        out[str(int(t.query_id))] = [int(i) for i in _top(dataset, rankings, t.query_id, reference, CIRCO_DEPTH)]
    return out


@SUBMISSIONS.register("circo")
def write_circo_submission(
    dataset: CIRDataset,
    rankings: Mapping[str, Sequence[str]],
    out_dir: str | Path,
    subset_rankings: Mapping[str, Sequence[str]] | None = None,
    tag: str = "opencir",
) -> list[Path]:
    """Write ``circo_<split>_submission_<tag>.json``."""
    return _write_json(out_dir, {f"circo_{dataset.split}_submission_{tag}.json": circo_submission(dataset, rankings)})


def write_submission(
    dataset: CIRDataset,
    rankings: Mapping[str, Sequence[str]],
    out_dir: str | Path,
    subset_rankings: Mapping[str, Sequence[str]] | None = None,
    tag: str = "opencir",
) -> list[Path]:
    """Write the server files of ``dataset.name`` (cirr, circo); fails with the known formats."""
    return SUBMISSIONS.get(dataset.name)(dataset, rankings, out_dir, subset_rankings, tag)
