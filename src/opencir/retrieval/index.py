"""The vector-index backend interface and its registry.

A backend stores L2-normalised float32 vectors under int64 keys and answers top-k
inner-product queries. It knows nothing about image ids, paths or models: the index
directory (``retrieval.store.IndexStore``) maps keys to images and decides when state
is persisted. Backends are looked up by name in ``INDEX_BACKENDS``:

* ``exact``  - FAISS flat inner product (the embedded default, exact results);
* ``faiss``  - any FAISS index built from a factory string (``IVF1024,Flat``, ``HNSW32``);
* ``milvus`` - a Milvus collection (a cluster, or milvus-lite for a local file).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from ..registry import Registry

DATA_DIR = "data"
"""Sub-folder of an index directory holding segments, records and backend files."""

SearchOutput = tuple[np.ndarray, np.ndarray]
"""scores (Q, k) float32 and keys (Q, k) int64; missing slots hold -inf and -1."""


@dataclass(frozen=True)
class Restriction:
    """Limits a search to the records that pass a metadata filter.

    ``keys`` (sorted int64) are the passing keys, computed by the index store from its
    records; ``where`` is the filter itself (``filters.Filter``), for backends that can
    evaluate it inside the engine (Milvus expressions). Key-based backends (FAISS id
    selectors) use ``keys``.
    """

    keys: np.ndarray
    where: Any = None


@dataclass(frozen=True)
class SearchKnob:
    """The search-time parameter that trades speed for recall (``nprobe``, ``ef_search``):
    an integer in [low, high]; larger is slower and more exact."""

    name: str
    low: int
    high: int


class IndexBackend(ABC):
    """Stores (key, vector) pairs and searches them by inner product.

    Lifecycle: ``create`` (a new empty index) or ``load`` (from the state a previous
    ``save`` returned); ``add``/``remove`` mutate; ``save(root, tag)`` persists into new
    files under ``root/DATA_DIR`` named with ``tag`` and returns the JSON state that
    ``load`` needs. ``root`` is always the index directory; file names in the state are
    relative to it.
    ``after_commit`` runs once the index manifest naming that state is on disk (backends
    whose storage is external defer destructive operations to it).
    """

    name: ClassVar[str] = ""
    stores_metadata: ClassVar[bool] = False
    """Whether ``add`` keeps the metadata it is given (to evaluate filters inside the engine)."""

    def __init__(self, dim: int, options: Mapping[str, Any]) -> None:
        self.dim = dim
        self.options = dict(options)

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, dim: int, options: Mapping[str, Any], directory: Path) -> "IndexBackend":
        """A new, empty index of ``dim``-d vectors; ``directory`` is the index directory (root)."""
        return cls(dim, cls.resolve_options(options))

    @classmethod
    @abstractmethod
    def load(cls, dim: int, options: Mapping[str, Any], state: Mapping[str, Any], directory: Path) -> "IndexBackend":
        """Reopen the index described by ``state`` (as returned by ``save``); ``directory`` is the root."""

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    """The backend's options and their default values (unknown option names are refused)."""

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``options`` and fill defaults; the result is stored in the manifest."""
        unknown = sorted(set(options) - set(cls.DEFAULTS))
        if unknown:
            raise ValueError(f"unknown {cls.name} backend options {unknown}; valid options: {sorted(cls.DEFAULTS)}")
        return {**cls.DEFAULTS, **options}

    @classmethod
    def check_build(cls, options: Mapping[str, Any], count: int, dim: Callable[[], int]) -> None:
        """ValueError when a new index with ``options`` cannot hold ``count`` vectors; runs
        before any image is encoded. ``dim()`` gives the vector size (it costs one encoder
        call: ask only when needed). Default: the options are valid."""
        cls.resolve_options(options)

    @abstractmethod
    def save(self, directory: Path, tag: str) -> dict[str, Any]:
        """Persist into new files under ``directory / DATA_DIR`` named with ``tag``; returns the state."""

    def state_files(self, state: Mapping[str, Any]) -> list[str]:
        """Files (relative to the index directory root) that ``state`` refers to."""
        return []

    def after_commit(self) -> None:
        """Called once the manifest naming the last saved state is written."""

    def compaction_due(self) -> bool:
        """Whether deleted entries degrade the index enough that the store should call
        ``rebuild`` with the live vectors before the next ``save`` (default: never)."""
        return False

    def rebuild(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the content with exactly ``keys``/``vectors`` (the live rows)."""
        raise NotImplementedError(f"the {self.name} backend does not rebuild")

    def close(self) -> None:
        """Release connections or file handles."""

    # --------------------------------------------------------------- mutation
    @abstractmethod
    def add(self, keys: np.ndarray, vectors: np.ndarray,
            metadata: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Add rows: keys (N,) int64, vectors (N, D) float32, optional normalised metadata
        (``filters.normalise_metadata``) per row for backends that filter inside the engine.
        Keys are fresh: larger than every key of a committed generation (the store hands
        them out in increasing order), so keys left by an interrupted write may be reused."""

    @abstractmethod
    def remove(self, keys: np.ndarray) -> None:
        """Remove keys (N,) int64; unknown keys are ignored."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of live vectors."""

    # ----------------------------------------------------------------- search
    @abstractmethod
    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None,
               restrict: Restriction | None = None, params: Mapping[str, Any] | None = None) -> SearchOutput:
        """Top-``k`` keys per query by inner product; ``exclude[i]`` lists keys never
        returned for query i; ``restrict`` keeps only the keys passing a filter; ``params``
        overrides search-time options for this call (e.g. ``{"nprobe": 64}``, see
        ``search_knob``). queries (Q, D) float32 -> scores (Q, k), keys (Q, k)."""

    def search_knob(self, k: int) -> SearchKnob | None:
        """The recall/speed parameter that ``retrieval.tuning`` tunes (None: exact search)."""
        return None

    def options_with(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The backend options that make ``params`` (e.g. a tuned ``{"nprobe": 24}``) the default."""
        return {**self.options, **params}

    def rerank_depth(self, k: int) -> int | None:
        """How many candidates the store should re-score exactly from the stored vectors for a
        top-``k`` search (``retrieval.rerank``); None: the backend's own scores are final."""
        return None


    # ---------------------------------------------------------------- helpers
    def check_vectors(self, keys: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validate and convert an ``add`` batch to contiguous int64 / float32 arrays."""
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"{self.name} index holds {self.dim}-d vectors, got an array of shape {vectors.shape}")
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        return keys, vectors

    def check_queries(self, queries: np.ndarray, k: int) -> np.ndarray:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"{self.name} index holds {self.dim}-d vectors, got queries of shape {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return queries


def empty_results(num_queries: int, k: int) -> SearchOutput:
    """Score/key arrays filled with the "no result" markers (-inf, -1)."""
    return np.full((num_queries, k), -np.inf, dtype=np.float32), np.full((num_queries, k), -1, dtype=np.int64)


INDEX_BACKENDS: Registry[type[IndexBackend]] = Registry("index backend")

BUILTIN_BACKEND_MODULES: list[str] = ["faiss_backend", "milvus_backend"]


def _import_builtin_backends() -> None:
    for module in BUILTIN_BACKEND_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def get_backend(name: str) -> type[IndexBackend]:
    """The backend class registered as ``name`` (importing the built-in backends first)."""
    _import_builtin_backends()
    return INDEX_BACKENDS.get(name)


def list_backends() -> list[str]:
    """Names of every registered backend."""
    _import_builtin_backends()
    return INDEX_BACKENDS.names()
