"""FAISS backends: ``exact`` (flat inner product) and ``faiss`` (any factory string).

``faiss`` builds its index with ``faiss.index_factory(dim, factory, METRIC_INNER_PRODUCT)``:
``"IVF1024,Flat"`` (inverted lists; ``nprobe`` lists are scanned per query),
``"HNSW32"`` (graph; ``ef_search`` candidates per query), ``"IVF4096,PQ64"`` ...
Indexes that need training (IVF, PQ) are trained on the vectors of the first commit.
Deletion uses ``remove_ids`` where FAISS supports it (flat, IVF) and otherwise (HNSW)
a persisted tombstone set that search filters with an ``IDSelector``. Tombstoned nodes
stay in the graph and take candidate slots, so (a) the index is compacted (rebuilt from
the live vectors by the index store) once they pass ``COMPACT_RATIO`` of its nodes, and
(b) a query that comes back with fewer than k live results while more exist is searched
again with a larger efSearch, up to the node count.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .files import atomic_save_npy, atomic_write
from .index import DATA_DIR, INDEX_BACKENDS, IndexBackend, SearchOutput, empty_results

COMPACT_RATIO = 0.1  # rebuild an HNSW index when this share of its nodes is deleted


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is an install extra
        raise ImportError("the FAISS backends need faiss: pip install 'opencir[index]'") from err
    return faiss


def _check_training_size(factory: str, nlist: int, count: int) -> None:
    if count < nlist:
        raise ValueError(
            f"FAISS factory {factory!r} needs at least {nlist} vectors to train its {nlist} lists, "
            f"the first commit has {count}; use fewer lists "
            f"(e.g. IVF{max(1, int(4 * np.sqrt(max(count, 1))))},Flat) or the exact backend"
        )


@INDEX_BACKENDS.register("faiss")
class FaissBackend(IndexBackend):
    """A FAISS index chosen by a factory string; options ``factory``, ``nprobe``, ``ef_search``."""

    name = "faiss"
    DEFAULTS: dict[str, Any] = {"factory": "HNSW32", "nprobe": 16, "ef_search": 64}

    def __init__(self, dim: int, options: Mapping[str, Any], index: Any = None, tombstones: set[int] | None = None) -> None:
        super().__init__(dim, options)
        faiss = _faiss()
        self._attach(index if index is not None else self._new_index(dim, self.options["factory"]))
        self.tombstones: set[int] = set(tombstones or ())
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # rows waiting for training

    def _attach(self, index: Any) -> None:
        faiss = _faiss()
        self.index = index
        self.ivf = faiss.try_extract_index_ivf(index)
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        self.hnsw = inner if isinstance(inner, faiss.IndexHNSW) else None

    def compaction_due(self) -> bool:
        return self.hnsw is not None and len(self.tombstones) > COMPACT_RATIO * max(int(self.index.ntotal), 1)

    def rebuild(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        keys, vectors = self.check_vectors(keys, vectors)
        self._attach(self._new_index(self.dim, self.options["factory"]))
        self.tombstones = set()
        self._pending = [(keys, vectors)] if len(keys) else []
        self._train_and_flush()

    @staticmethod
    def _new_index(dim: int, factory: str) -> Any:
        faiss = _faiss()
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"invalid FAISS factory string {factory!r} for {dim}-d vectors: {err}") from None
        # IVF indexes store ids themselves (and remove_ids keeps them consistent); others get an id map.
        return index if faiss.try_extract_index_ivf(index) is not None else faiss.IndexIDMap2(index)

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        resolved = super().resolve_options(options)
        for key in ("nprobe", "ef_search"):
            if int(resolved[key]) < 1:
                raise ValueError(f"{cls.name} backend option {key} must be >= 1, got {resolved[key]!r}")
            resolved[key] = int(resolved[key])
        resolved["factory"] = str(resolved["factory"])
        return resolved

    @classmethod
    def check_build(cls, options: Mapping[str, Any], count: int, dim: Callable[[], int]) -> None:
        resolved = cls.resolve_options(options)
        if resolved["factory"] == "Flat":
            return
        index = cls._new_index(dim(), resolved["factory"])
        if not index.is_trained:
            ivf = _faiss().try_extract_index_ivf(index)
            _check_training_size(resolved["factory"], ivf.nlist if ivf is not None else 1, count)

    @classmethod
    def create(cls, dim: int, options: Mapping[str, Any], directory: Path) -> "FaissBackend":
        return cls(dim, cls.resolve_options(options))

    @classmethod
    def load(cls, dim: int, options: Mapping[str, Any], state: Mapping[str, Any], directory: Path) -> "FaissBackend":
        faiss = _faiss()
        path = directory / state["index_file"]
        if not path.is_file():
            raise FileNotFoundError(f"index file {path} is missing; the index directory is damaged")
        index = faiss.read_index(str(path))
        tombstones: set[int] = set()
        if state.get("tombstones_file"):
            tombstones = set(np.load(directory / state["tombstones_file"]).tolist())
        backend = cls(dim, options, index=index, tombstones=tombstones)  # options were resolved at create
        if index.d != dim:
            raise ValueError(f"{path} holds {index.d}-d vectors, the manifest says {dim}")
        return backend

    # ------------------------------------------------------------- persistence
    def save(self, directory: Path, tag: str) -> dict[str, Any]:
        faiss = _faiss()
        self._train_and_flush()
        state: dict[str, Any] = {"index_file": f"{DATA_DIR}/{self.name}-{tag}.index", "tombstones_file": None}
        atomic_write(directory / state["index_file"], lambda tmp: faiss.write_index(self.index, str(tmp)))
        if self.tombstones:
            state["tombstones_file"] = f"{DATA_DIR}/{self.name}-{tag}.tombstones.npy"
            keys = np.array(sorted(self.tombstones), dtype=np.int64)
            atomic_save_npy(directory / state["tombstones_file"], keys)
        return state

    def state_files(self, state: Mapping[str, Any]) -> list[str]:
        return [name for name in (state.get("index_file"), state.get("tombstones_file")) if name]

    # ---------------------------------------------------------------- mutation
    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        keys, vectors = self.check_vectors(keys, vectors)
        if len(keys) == 0:
            return
        self._pending.append((keys, vectors))
        if self.index.is_trained:
            self._train_and_flush()

    def _train_and_flush(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([k for k, _ in self._pending])
        vectors = np.concatenate([v for _, v in self._pending])
        if not self.index.is_trained:
            _check_training_size(self.options["factory"], self.ivf.nlist if self.ivf is not None else 1, len(vectors))
            self.index.train(vectors)
        self.index.add_with_ids(vectors, keys)
        self._pending = []

    def remove(self, keys: np.ndarray) -> None:
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        if len(keys) == 0:
            return
        self._train_and_flush()
        if self.hnsw is not None:  # graph indexes cannot drop nodes: hide them instead
            self.tombstones.update(int(k) for k in keys)
            return
        self.index.remove_ids(_faiss().IDSelectorBatch(keys))

    def __len__(self) -> int:
        return int(self.index.ntotal) + sum(len(k) for k, _ in self._pending) - len(self.tombstones)

    # ------------------------------------------------------------------ search
    def _params(self, banned: set[int], k: int = 1) -> tuple[Any, list[Any]]:
        """Search parameters carrying this index's nprobe / efSearch (at least ``k``: FAISS
        HNSW returns fewer than k results when efSearch < k) and a selector that hides
        ``banned`` keys; also returns objects that must outlive the search call."""
        faiss = _faiss()
        keep: list[Any] = []
        selector = None
        if banned:
            batch = faiss.IDSelectorBatch(np.fromiter(banned, dtype=np.int64, count=len(banned)))
            selector = faiss.IDSelectorNot(batch)
            keep += [batch, selector]
        if self.ivf is not None:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=min(self.options["nprobe"], self.ivf.nlist))
        elif self.hnsw is not None:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.options["ef_search"], k))
        else:
            params = faiss.SearchParameters(sel=selector)
        return params, keep

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None) -> SearchOutput:
        queries = self.check_queries(queries, k)
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        self._train_and_flush()
        if self.index.ntotal == 0:
            return empty_results(len(queries), k)
        if exclude is None or not any(len(e) for e in exclude):
            params, _keep = self._params(self.tombstones, k)
            scores, keys = self.index.search(queries, k, params=params)
        else:  # each query hides its own keys: search one at a time
            scores, keys = empty_results(len(queries), k)
            for row, banned in enumerate(exclude):
                params, _keep = self._params(self.tombstones | {int(b) for b in banned}, k)
                scores[row : row + 1], keys[row : row + 1] = self.index.search(queries[row : row + 1], k, params=params)
        if self.hnsw is not None and self.tombstones:
            self._search_deeper(queries, k, exclude, scores, keys)
        scores = scores.astype(np.float32, copy=False)
        scores[keys < 0] = -np.inf
        return scores, keys.astype(np.int64, copy=False)

    def _search_deeper(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None,
                       scores: np.ndarray, keys: np.ndarray) -> None:
        """Re-search (in place) rows that came back short while live results remain: deleted
        graph nodes used up the candidate list. efSearch doubles up to the node count."""
        live = len(self)
        for row in range(len(queries)):
            banned = {int(b) for b in (exclude[row] if exclude is not None else ())}
            wanted = min(k, live - len(banned))
            ef = max(self.options["ef_search"], k)
            while int((keys[row] >= 0).sum()) < wanted and ef < self.index.ntotal:
                ef = min(2 * ef, int(self.index.ntotal))
                params, _keep = self._params(self.tombstones | banned)
                params.efSearch = ef
                scores[row : row + 1], keys[row : row + 1] = self.index.search(queries[row : row + 1], k, params=params)


@INDEX_BACKENDS.register("exact")
class ExactBackend(FaissBackend):
    """Exact inner-product search (FAISS flat): the embedded default."""

    name = "exact"
    DEFAULTS: dict[str, Any] = {}

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        if options:
            raise ValueError(f"the exact backend takes no options, got {sorted(options)}; use --backend faiss for a factory string")
        return {"factory": "Flat", "nprobe": 1, "ef_search": 1}
