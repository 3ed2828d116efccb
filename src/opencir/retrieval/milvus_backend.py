"""Milvus backend: vectors live in a Milvus collection, for catalogues past one machine.

``uri`` is a Milvus server (``http://host:19530``, a cluster behind a proxy) or a local
milvus-lite file (the default, ``milvus.db`` inside the index directory); both speak the
same ``pymilvus.MilvusClient`` API. A server token, when needed, is read from the
``MILVUS_TOKEN`` environment variable and never written to the index manifest.

Options: ``uri``, ``collection`` (default: a fresh ``opencir_<hex>`` name),
``index_type`` (``FLAT`` | ``IVF_FLAT`` | ``HNSW`` | ``AUTOINDEX`` ...), ``index_params``
and ``search_params`` (dicts passed to Milvus, e.g. ``{"nlist": 1024}``/``{"nprobe": 16}``).

Crash safety: inserts reach Milvus before the index manifest is committed, deletions only
after it (``after_commit``); an interrupted write can therefore only leave keys that the
manifest does not list, which the index store drops from results.
"""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import IndexBusyError
from .index import INDEX_BACKENDS, IndexBackend, SearchOutput, empty_results
from .locking import is_locked_elsewhere, processes_holding

MAX_TOP_K = 16384  # Milvus' limit on ``limit`` per search
INSERT_BATCH = 8192
FILTER_BATCH = 16384


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def _raise_if_held(database: Path) -> None:
    """IndexBusyError naming the process when another one holds a milvus-lite database."""
    lock = database / "LOCK" if database.is_dir() else database.with_name(f".{database.name}.lock")
    if not is_locked_elsewhere(lock):
        return
    holders = processes_holding(lock)
    who = f"process {', '.join(holders)}" if holders else "another process"
    raise IndexBusyError(
        f"the milvus-lite database {database} is held by {who}. milvus-lite lets one process at a time "
        "open a database: stop that process (e.g. a running `opencir serve`), or add and delete through "
        "that server's HTTP API, or keep the collection on a Milvus server (--option uri=http://HOST:19530), "
        "which any number of processes can use at once"
    ) from None


@INDEX_BACKENDS.register("milvus")
class MilvusBackend(IndexBackend):
    """A Milvus collection with an INT64 primary key ``id`` and a FLOAT_VECTOR ``vector``."""

    name = "milvus"
    DEFAULTS: dict[str, Any] = {
        "uri": "milvus.db",
        "collection": None,
        "index_type": "FLAT",
        "index_params": {},
        "search_params": {},
    }

    def __init__(self, dim: int, options: Mapping[str, Any], client: Any) -> None:
        super().__init__(dim, options)
        self.client = client
        self.collection = self.options["collection"]
        self._removed: set[int] = set()  # hidden now, deleted from Milvus after the commit

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        resolved = super().resolve_options(options)
        if not resolved["collection"]:
            resolved["collection"] = f"opencir_{uuid.uuid4().hex[:12]}"
        for key in ("index_params", "search_params"):
            if not isinstance(resolved[key], Mapping):
                raise ValueError(f"{cls.name} backend option {key} must be a mapping, got {resolved[key]!r}")
        return resolved

    @staticmethod
    def _connect(uri: str, directory: Path) -> Any:
        try:
            from pymilvus import MilvusClient
        except ImportError as err:  # pragma: no cover - pymilvus is an install extra
            raise ImportError("the milvus backend needs pymilvus (and milvus-lite for local files): pip install 'opencir[milvus]'") from err
        token = os.environ.get("MILVUS_TOKEN", "")
        if _is_server(uri):
            return MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)
        uri = str((directory / uri) if not Path(uri).is_absolute() else Path(uri))
        quiet = _Quiet()  # milvus-lite logs a full traceback when it cannot start: we say why instead
        logging.getLogger("milvus_lite.server_manager").addFilter(quiet)
        try:
            return MilvusClient(uri=uri)
        except Exception:
            _raise_if_held(Path(uri))
            raise
        finally:
            logging.getLogger("milvus_lite.server_manager").removeFilter(quiet)

    @classmethod
    def create(cls, dim: int, options: Mapping[str, Any], directory: Path) -> "MilvusBackend":
        from pymilvus import DataType, MilvusClient

        options = cls.resolve_options(options)
        client = cls._connect(options["uri"], directory)
        name = options["collection"]
        if client.has_collection(name):
            client.close()
            raise ValueError(f"Milvus collection {name!r} already exists at {options['uri']}; pick another collection name")
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index_params = client.prepare_index_params()
        index_params.add_index(
            field_name="vector", index_type=options["index_type"], metric_type="IP", params=dict(options["index_params"])
        )
        client.create_collection(name, schema=schema, index_params=index_params, consistency_level="Strong")
        return cls(dim, options, client)

    @classmethod
    def load(cls, dim: int, options: Mapping[str, Any], state: Mapping[str, Any], directory: Path) -> "MilvusBackend":
        client = cls._connect(options["uri"], directory)
        if not client.has_collection(options["collection"]):
            client.close()
            raise FileNotFoundError(
                f"Milvus collection {options['collection']!r} is missing at {options['uri']}; rebuild the index"
            )
        client.load_collection(options["collection"])
        return cls(dim, options, client)

    def save(self, directory: Path, tag: str) -> dict[str, Any]:
        self.client.flush(self.collection)
        return {"collection": self.collection}

    def after_commit(self) -> None:
        removed = sorted(self._removed)
        for start in range(0, len(removed), FILTER_BATCH):
            self.client.delete(self.collection, ids=removed[start : start + FILTER_BATCH])
        self._removed.clear()

    def close(self) -> None:
        self.client.close()

    # ---------------------------------------------------------------- mutation
    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        keys, vectors = self.check_vectors(keys, vectors)
        for start in range(0, len(keys), INSERT_BATCH):
            rows = [
                {"id": int(key), "vector": vector.tolist()}
                for key, vector in zip(keys[start : start + INSERT_BATCH], vectors[start : start + INSERT_BATCH])
            ]
            # upsert: a key left behind by an interrupted commit is simply overwritten
            self.client.upsert(self.collection, rows)
        self._removed.difference_update(int(k) for k in keys)

    def remove(self, keys: np.ndarray) -> None:
        self._removed.update(int(k) for k in np.asarray(keys, dtype=np.int64).reshape(-1))

    def __len__(self) -> int:
        result = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"]) - len(self._removed)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None) -> SearchOutput:
        queries = self.check_queries(queries, k)
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        if k > MAX_TOP_K:
            raise ValueError(f"Milvus returns at most {MAX_TOP_K} results per query, asked for {k}")
        scores, keys = empty_results(len(queries), k)
        params = {"metric_type": "IP", "params": dict(self.options["search_params"])}
        if exclude is None and not self._removed:
            groups = [(list(range(len(queries))), "")]
        else:
            groups = []
            for row in range(len(queries)):
                banned = self._removed | {int(b) for b in (exclude[row] if exclude is not None else ())}
                groups.append(([row], f"id not in [{','.join(map(str, sorted(banned)))}]" if banned else ""))
        for rows, expression in groups:
            hits = self.client.search(
                self.collection,
                data=queries[rows].tolist(),
                limit=k,
                filter=expression,
                output_fields=["id"],
                search_params=params,
            )
            for row, row_hits in zip(rows, hits):
                for rank, hit in enumerate(row_hits[:k]):
                    keys[row, rank] = int(hit["id"])
                    scores[row, rank] = float(hit["distance"])
        return scores, keys
