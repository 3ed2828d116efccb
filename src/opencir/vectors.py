"""Vector files written by ``opencir encode``: ``.npy`` (+ ``.ids.json``) or ``.parquet``.

``.npy``: the (N, D) float32 matrix; the row ids (and, for queries, the texts and
references) go to ``<name>.ids.json`` beside it. ``.parquet`` (needs pyarrow): one row per
vector with columns ``image_id`` (or ``query_id``), ``vector`` (fixed-size list of float32),
and for queries ``reference`` and ``text``; the file's metadata records the model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .registry import Registry

VectorWriter = Callable[[Path, np.ndarray, Mapping[str, Sequence[str]], Mapping[str, Any]], list[Path]]
WRITERS: Registry[VectorWriter] = Registry("vector file format")


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@WRITERS.register(".npy")
def write_npy(path: Path, vectors: np.ndarray, columns: Mapping[str, Sequence[str]], meta: Mapping[str, Any]) -> list[Path]:
    """The matrix as ``.npy`` and its row ids/columns as ``<stem>.ids.json``."""
    sidecar = path.with_name(path.stem + ".ids.json")
    tmp = _tmp(path)
    with tmp.open("wb") as handle:
        np.save(handle, vectors)
    os.replace(tmp, path)
    tmp = _tmp(sidecar)
    tmp.write_text(json.dumps({**meta, **{k: list(v) for k, v in columns.items()}}, indent=1))
    os.replace(tmp, sidecar)
    return [path, sidecar]


@WRITERS.register(".parquet")
def write_parquet(path: Path, vectors: np.ndarray, columns: Mapping[str, Sequence[str]], meta: Mapping[str, Any]) -> list[Path]:
    """One row per vector: the string columns, then ``vector`` as fixed_size_list<float32>."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("writing .parquet needs pyarrow: pip install 'opencir[parquet]' (or write .npy)") from None
    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    table = pa.table({**{k: pa.array(list(v), pa.string()) for k, v in columns.items()},
                      "vector": pa.FixedSizeListArray.from_arrays(flat, dim)})
    table = table.replace_schema_metadata({"opencir": json.dumps(dict(meta))})
    tmp = _tmp(path)
    pq.write_table(table, str(tmp))
    os.replace(tmp, path)
    return [path]


def write_vectors(path: str | Path, vectors: np.ndarray, columns: Mapping[str, Sequence[str]],
                  meta: Mapping[str, Any]) -> list[Path]:
    """Write ``vectors`` with the format chosen by the file suffix; returns the files written."""
    path = Path(path)
    writer = WRITERS.get(path.suffix.lower()) if path.suffix.lower() in WRITERS else None
    if writer is None:
        raise ValueError(f"--out {path}: choose a .npy or .parquet file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return writer(path, vectors, columns, meta)
