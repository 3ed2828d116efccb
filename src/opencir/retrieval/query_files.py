"""Query files for batch search: ``q.jsonl`` (one query object per line) or ``q.csv``.

JSONL: each line is a query in the JSON form of :mod:`opencir.retrieval.query` plus an
optional ``query_id`` (default: the line number) and ``k``::

    {"query_id": "q1", "ref_id": "shoes/red_01", "text": "make it blue"}
    {"query_id": "q2", "references": ["a", {"image": "ref.jpg", "weight": 0.5}], "texts": ["red"], "k": 5}

CSV: a header with ``text`` and one of ``ref_id`` / ``image``, optionally ``query_id``,
``negative_text`` and ``k``. Image paths are relative to the query file's folder. Errors
name the file and line.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .query import QuerySpec, spec_from_dict


@dataclass(frozen=True)
class QueryLine:
    """One query of a query file."""

    query_id: str
    spec: QuerySpec
    k: int | None = None


def _k(value: Any, where: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: k must be a positive integer, got {value!r}") from None
    if k < 1 or isinstance(value, bool):
        raise ValueError(f"{where}: k must be a positive integer, got {value!r}")
    return k


def _line(payload: dict[str, Any], number: int, where: str, folder: Path) -> QueryLine:
    payload = dict(payload)
    query_id = str(payload.pop("query_id", number))
    k = _k(payload.pop("k", None), where)
    spec = spec_from_dict({key: v for key, v in payload.items() if v not in (None, "")},
                          lambda name: _image(folder, name, where), where)
    return QueryLine(query_id, spec, k)


def _image(folder: Path, name: str, where: str) -> Path:
    path = Path(name) if Path(name).is_absolute() else folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image not found: {path}")
    return path


def read_queries(path: str | Path) -> list[QueryLine]:
    """The queries of ``path`` (``.jsonl`` / ``.json`` lines or ``.csv``); ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"query file not found: {path}")
    lines: list[QueryLine] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            if "text" not in columns or not columns & {"ref_id", "image"}:
                raise ValueError(f"{path}: the header needs a text column and a ref_id or image column, "
                                 f"got {sorted(columns)}")
            extra = columns - {"query_id", "ref_id", "image", "text", "negative_text", "k"}
            if extra:
                raise ValueError(f"{path}: unknown columns {sorted(extra)}")
            for number, row in enumerate(reader, start=1):
                lines.append(_line(row, number, f"{path}:{number + 1}", path.parent))
    elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8") as handle:
            number = 0
            for line_number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                number += 1
                where = f"{path}:{line_number}"
                try:
                    payload = json.loads(text)
                except ValueError as err:
                    raise ValueError(f"{where}: not a JSON object: {err}") from None
                if not isinstance(payload, dict):
                    raise ValueError(f"{where}: a query line is a JSON object")
                lines.append(_line(payload, number, where, path.parent))
    else:
        raise ValueError(f"{path}: query files are .jsonl or .csv")
    if not lines:
        raise ValueError(f"{path}: no queries")
    seen: set[str] = set()
    for line in lines:
        if line.query_id in seen:
            raise ValueError(f"{path}: query_id {line.query_id!r} appears twice")
        seen.add(line.query_id)
    return lines
