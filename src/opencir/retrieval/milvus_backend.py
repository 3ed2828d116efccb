"""Milvus backend: vectors live in a Milvus collection, for catalogues past one machine.

``uri`` is a Milvus server (``http://host:19530``, a cluster behind a proxy) or a local
milvus-lite file (the default, ``milvus.db`` inside the index directory); both speak the
same ``pymilvus.MilvusClient`` API. A server token, when needed, is read from the
``MILVUS_TOKEN`` environment variable and never written to the index manifest.

Options: ``uri``, ``collection`` (default: a fresh ``opencir_<hex>`` name),
``index_type`` (``FLAT`` | ``IVF_FLAT`` | ``HNSW`` | ``AUTOINDEX`` ...), ``index_params``
and ``search_params`` (dicts passed to Milvus, e.g. ``{"nlist": 1024}``/``{"nprobe": 16}``),
``metadata`` (default true: each image's normalised metadata is stored in a JSON field
``meta`` so that filters run inside Milvus as boolean expressions), ``consistency_level``
of searches (default ``Strong``: a search sees every committed insert, and waits for
Milvus' next time tick to do so; ``Bounded`` / ``Session`` / ``Eventually`` answer
without that wait and may miss inserts of the last seconds).

Inserts are plain ``insert`` calls of numpy rows (the store hands out fresh keys; the
first insert of a writing session first deletes keys at or above its first key, which
only an interrupted write can have left). A batch of queries is one ``search`` call, also
with per-query exclusions: it asks for ``k`` plus the longest exclusion list and drops
excluded keys from each row.

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
from .index import INDEX_BACKENDS, IndexBackend, Restriction, SearchKnob, SearchOutput, empty_results
from .locking import is_locked_elsewhere, processes_holding

MAX_TOP_K = 16384  # Milvus' limit on ``limit`` per search
INSERT_BATCH = 8192
FILTER_BATCH = 16384
META_FIELD = "meta"
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
MAX_EF = 4096


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
    stores_metadata = True
    DEFAULTS: dict[str, Any] = {
        "uri": "milvus.db",
        "collection": None,
        "index_type": "FLAT",
        "index_params": {},
        "search_params": {},
        "metadata": True,
        "consistency_level": "Strong",
    }

    def __init__(self, dim: int, options: Mapping[str, Any], client: Any) -> None:
        super().__init__(dim, options)
        self.client = client
        self.collection = self.options["collection"]
        self._removed: set[int] = set()  # hidden now, deleted from Milvus after the commit
        self._cleared = False  # leftovers of an interrupted write removed (first add of a session)
        self.has_metadata = bool(self.options.get("metadata", False))  # older indexes have no meta field

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        resolved = super().resolve_options(options)
        if not resolved["collection"]:
            resolved["collection"] = f"opencir_{uuid.uuid4().hex[:12]}"
        for key in ("index_params", "search_params"):
            if not isinstance(resolved[key], Mapping):
                raise ValueError(f"{cls.name} backend option {key} must be a mapping, got {resolved[key]!r}")
        if resolved["consistency_level"] not in CONSISTENCY_LEVELS:
            raise ValueError(f"{cls.name} backend option consistency_level must be one of {', '.join(CONSISTENCY_LEVELS)}, "
                             f"got {resolved['consistency_level']!r}")
        if not isinstance(resolved["metadata"], bool):
            raise ValueError(f"{cls.name} backend option metadata must be true or false, got {resolved['metadata']!r}")
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
        if options["metadata"]:
            schema.add_field(META_FIELD, DataType.JSON)
        index_params = client.prepare_index_params()
        index_params.add_index(
            field_name="vector", index_type=options["index_type"], metric_type="IP", params=dict(options["index_params"])
        )
        client.create_collection(name, schema=schema, index_params=index_params, consistency_level="Strong")
        backend = cls(dim, options, client)
        backend._cleared = True  # a new collection has no leftovers
        return backend

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
    def add(self, keys: np.ndarray, vectors: np.ndarray,
            metadata: Sequence[Mapping[str, Any]] | None = None) -> None:
        keys, vectors = self.check_vectors(keys, vectors)
        if len(keys) == 0:
            return
        if not self._cleared:  # keys are fresh: any row at or above them was left by an interrupted write
            self.client.delete(self.collection, filter=f"id >= {int(keys.min())}")
            self._cleared = True
        for start in range(0, len(keys), INSERT_BATCH):
            stop = start + INSERT_BATCH
            rows = [{"id": int(key), "vector": vector} for key, vector in zip(keys[start:stop].tolist(), vectors[start:stop])]
            if self.has_metadata:
                for row, meta in zip(rows, metadata[start:stop] if metadata is not None else [{}] * len(rows)):
                    row[META_FIELD] = dict(meta or {})
            self.client.insert(self.collection, rows)
        self._removed.difference_update(int(k) for k in keys)

    def remove(self, keys: np.ndarray) -> None:
        self._removed.update(int(k) for k in np.asarray(keys, dtype=np.int64).reshape(-1))

    def __len__(self) -> int:
        result = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"]) - len(self._removed)

    # ------------------------------------------------------------------ search
    def search_knob(self, k: int) -> SearchKnob | None:
        index_type = str(self.options["index_type"]).upper()
        if index_type.startswith("IVF"):
            return SearchKnob("nprobe", 1, int(self.options["index_params"].get("nlist", 128)))
        if index_type == "HNSW":
            return SearchKnob("ef", k, MAX_EF)
        return None

    def options_with(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.options, "search_params": {**self.options["search_params"], **params}}

    def _expression(self, restrict: Restriction | None, banned: set[int]) -> str:
        """The Milvus filter: the metadata filter (or its keys) and the keys never returned."""
        parts = []
        if restrict is not None:
            if self.has_metadata and restrict.where is not None:
                parts.append(f"({restrict.where.milvus_expression(META_FIELD)})")
            else:
                parts.append(f"id in [{','.join(map(str, restrict.keys.tolist()))}]")
        if banned:
            parts.append(f"id not in [{','.join(map(str, sorted(banned)))}]")
        return " and ".join(parts)

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None,
               restrict: Restriction | None = None, params: Mapping[str, Any] | None = None) -> SearchOutput:
        queries = self.check_queries(queries, k)
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        if k > MAX_TOP_K:
            raise ValueError(f"Milvus returns at most {MAX_TOP_K} results per query, asked for {k}")
        scores, keys = empty_results(len(queries), k)
        if restrict is not None and len(restrict.keys) == 0:
            return scores, keys
        search_params = {"metric_type": "IP", "params": {**self.options["search_params"], **(params or {})}}
        excluded = [{int(b) for b in e} for e in exclude] if exclude is not None else [set() for _ in queries]
        deepest = k + max((len(e) for e in excluded), default=0)
        if deepest <= MAX_TOP_K:  # one call for the batch; each row drops its own excluded keys
            groups = [(list(range(len(queries))), self._expression(restrict, self._removed), deepest)]
        else:  # exclusion lists too long to over-fetch: one filtered call per query
            groups = [([row], self._expression(restrict, self._removed | excluded[row]), k) for row in range(len(queries))]
        for rows, expression, limit in groups:
            hits = self.client.search(self.collection, data=queries[rows].tolist(), limit=limit, filter=expression,
                                      output_fields=["id"], search_params=search_params,
                                      consistency_level=self.options.get("consistency_level", "Strong"))
            for row, row_hits in zip(rows, hits):
                rank = 0
                for hit in row_hits:
                    key = int(hit["id"])
                    if key in excluded[row]:
                        continue
                    keys[row, rank], scores[row, rank] = key, float(hit["distance"])
                    rank += 1
                    if rank == k:
                        break
        return scores, keys
