"""FAISS backends: ``exact`` (flat inner product) and ``faiss`` (any factory string).

``faiss`` builds its index with ``faiss.index_factory(dim, factory, METRIC_INNER_PRODUCT)``:
``"IVF1024,Flat"`` (inverted lists; ``nprobe`` lists are scanned per query),
``"HNSW32"`` (graph; ``ef_search`` candidates per query), ``"IVF1000,PQ128x4fs,RFlat"``
(compressed IVF-PQ codes re-ranked exactly: ``k_factor * k`` candidates are re-scored
with the full vectors), ``"IVF4096_HNSW32,Flat"`` (an HNSW coarse quantizer,
``quantizer_ef_search``) ...  Options:

* ``nprobe``, ``ef_search``, ``k_factor``, ``quantizer_ef_search``: search-time defaults
  (each can be overridden per search, and ``retrieval.tuning`` chooses them for a recall
  target);
* ``ef_construction``: HNSW graph build effort (FAISS' default 40 when unset);
* ``train_size``: vectors sampled (uniformly over the first commit) to train IVF / PQ
  quantizers; default ``max(256 * nlist, 65536)`` (256 per list is where FAISS' k-means
  stops using more points anyway; fewer make coarser lists and cost recall per nprobe);
* ``rerank``: re-rank ``rerank * k`` candidates exactly from the index directory's stored
  float32 vectors (memory-mapped, ``retrieval.rerank``) — IVF-PQ codes in RAM, exact
  order, for catalogues whose float32 vectors do not fit in memory.

Every index but a bare IVF one is wrapped in an ``IndexIDMap2`` so it stores our int64
keys (refined and graph indexes cannot ``add_with_ids`` themselves). Adds stream into the
index once it is trained; before that they wait, un-copied, until the first ``save`` or
search trains on a sample. Deletion uses ``remove_ids`` where FAISS supports it (flat,
IVF) and otherwise (HNSW, refined) a persisted tombstone set hidden by an ``IDSelector``.
Tombstoned HNSW nodes stay in the graph and take candidate slots, so (a) the index is
compacted (rebuilt from the live vectors by the index store) once they pass
``COMPACT_RATIO`` of its nodes, and (b) a query that comes back with fewer than k live
results while more exist is searched again with a larger efSearch, up to the node count;
efSearch is never below k (FAISS HNSW returns fewer than k results otherwise).
Filters (``Restriction``) and exclusions are FAISS id selectors evaluated inside the search.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .files import atomic_save_npy, atomic_write
from .index import DATA_DIR, INDEX_BACKENDS, IndexBackend, Restriction, SearchKnob, SearchOutput, empty_results

SEARCH_OPTIONS = ("nprobe", "ef_search", "k_factor", "quantizer_ef_search")
FAISS_DEFAULTS: dict[str, Any] = {
    "factory": "HNSW32", "nprobe": 16, "ef_search": 64, "k_factor": 4, "quantizer_ef_search": None,
    "ef_construction": None, "train_size": None, "rerank": None,
}
MIN_TRAIN_SIZE = 65536
TRAIN_PER_LIST = 256
MAX_EF_SEARCH = 4096
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


def _positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"faiss backend option {name} must be an integer >= 1, got {value!r}")
    return number


@INDEX_BACKENDS.register("faiss")
class FaissBackend(IndexBackend):
    """A FAISS index chosen by a factory string (see the module docstring for the options)."""

    name = "faiss"
    DEFAULTS: dict[str, Any] = FAISS_DEFAULTS

    def __init__(self, dim: int, options: Mapping[str, Any], index: Any = None, tombstones: set[int] | None = None) -> None:
        super().__init__(dim, options)
        faiss = _faiss()
        if index is None:
            index = self._new_index(dim, self.options["factory"], self._option("ef_construction"))
        self._attach(index)
        self.tombstones: set[int] = set(tombstones or ())
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # rows waiting for training

    def _attach(self, index: Any) -> None:
        faiss = _faiss()
        self.index = index  # the owning wrapper: downcast views below must not outlive it
        typed = faiss.downcast_index(index)
        self.idmap = typed if isinstance(typed, faiss.IndexIDMap) else None
        inner = faiss.downcast_index(typed.index) if self.idmap is not None else typed
        self.refine = inner if isinstance(inner, faiss.IndexRefine) else None
        self.base = faiss.downcast_index(inner.base_index) if self.refine is not None else inner
        self.ivf = faiss.try_extract_index_ivf(self.base)
        self.hnsw = self.base if isinstance(self.base, faiss.IndexHNSW) else None
        quantizer = faiss.downcast_index(self.ivf.quantizer) if self.ivf is not None else None
        self.hnsw_quantizer = quantizer if isinstance(quantizer, faiss.IndexHNSW) else None

    def compaction_due(self) -> bool:
        return self.hnsw is not None and len(self.tombstones) > COMPACT_RATIO * max(int(self.index.ntotal), 1)

    def rebuild(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        keys, vectors = self.check_vectors(keys, vectors)
        self._attach(self._new_index(self.dim, self.options["factory"], self._option("ef_construction")))
        self.tombstones = set()
        self._pending = [(keys, vectors)] if len(keys) else []
        self._train_and_flush()

    def _option(self, name: str) -> Any:
        """An option's value (indexes saved before an option existed get its default)."""
        return self.options.get(name, FAISS_DEFAULTS[name])

    @staticmethod
    def _new_index(dim: int, factory: str, ef_construction: int | None) -> Any:
        faiss = _faiss()
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"invalid FAISS factory string {factory!r} for {dim}-d vectors: {err}") from None
        typed = faiss.downcast_index(index)  # a view: ``index`` keeps owning the C++ object
        if ef_construction is not None:
            graphs = [typed, getattr(typed, "base_index", None), getattr(typed, "quantizer", None)]
            ivf = faiss.try_extract_index_ivf(typed)
            graphs.append(ivf.quantizer if ivf is not None else None)
            for graph in graphs:
                graph = faiss.downcast_index(graph) if graph is not None else None
                if isinstance(graph, faiss.IndexHNSW):
                    graph.hnsw.efConstruction = ef_construction
        # a bare IVF index stores ids itself (and remove_ids keeps them consistent); others get an id map
        return index if isinstance(typed, faiss.IndexIVF) else faiss.IndexIDMap2(index)

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        resolved = super().resolve_options(options)
        for key in ("nprobe", "ef_search", "k_factor"):
            resolved[key] = _positive_int(key, resolved[key])
        for key in ("quantizer_ef_search", "ef_construction", "train_size", "rerank"):
            resolved[key] = _positive_int(key, resolved[key], allow_none=True)
        resolved["factory"] = str(resolved["factory"])
        return resolved

    @classmethod
    def check_build(cls, options: Mapping[str, Any], count: int, dim: Callable[[], int]) -> None:
        resolved = cls.resolve_options(options)
        if resolved["factory"] == "Flat":
            return
        index = cls._new_index(dim(), resolved["factory"], resolved.get("ef_construction"))
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
    def add(self, keys: np.ndarray, vectors: np.ndarray,
            metadata: Sequence[Mapping[str, Any]] | None = None) -> None:
        keys, vectors = self.check_vectors(keys, vectors)
        if len(keys) == 0:
            return
        self._pending.append((keys, vectors))
        if self.index.is_trained:
            self._train_and_flush()

    def training_size(self, available: int) -> int:
        """How many of ``available`` vectors train the quantizers."""
        size = self._option("train_size")
        if size is None:
            size = max(TRAIN_PER_LIST * (self.ivf.nlist if self.ivf is not None else 1), MIN_TRAIN_SIZE)
        return min(available, int(size))

    def _training_sample(self) -> np.ndarray:
        """A uniform sample of the pending rows, gathered without concatenating them all."""
        total = sum(len(k) for k, _ in self._pending)
        size = self.training_size(total)
        if size == total and len(self._pending) == 1:
            return self._pending[0][1]
        rows = np.sort(np.random.default_rng(0).choice(total, size=size, replace=False))
        sample = np.empty((size, self.dim), dtype=np.float32)
        offset, filled = 0, 0
        for _, vectors in self._pending:
            chosen = rows[(rows >= offset) & (rows < offset + len(vectors))] - offset
            sample[filled : filled + len(chosen)] = vectors[chosen]
            filled += len(chosen)
            offset += len(vectors)
        return sample

    def _train_and_flush(self) -> None:
        if not self._pending:
            return
        if not self.index.is_trained:
            total = sum(len(k) for k, _ in self._pending)
            _check_training_size(self.options["factory"], self.ivf.nlist if self.ivf is not None else 1, total)
            self.index.train(self._training_sample())
        while self._pending:  # stream: each batch is released once it is in the index
            keys, vectors = self._pending.pop(0)
            self.index.add_with_ids(vectors, keys)

    def remove(self, keys: np.ndarray) -> None:
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        if len(keys) == 0:
            return
        self._train_and_flush()
        if self.hnsw is None and self.refine is None:
            try:
                self.index.remove_ids(_faiss().IDSelectorBatch(keys))
                return
            except RuntimeError:  # "remove_ids not implemented": raised before anything changed
                pass
        self.tombstones.update(int(k) for k in keys)  # graph and refined indexes cannot drop rows: hide them

    def __len__(self) -> int:
        return int(self.index.ntotal) + sum(len(k) for k, _ in self._pending) - len(self.tombstones)

    # ------------------------------------------------------------------ search
    def search_knob(self, k: int) -> SearchKnob | None:
        if self.ivf is not None:
            return SearchKnob("nprobe", 1, int(self.ivf.nlist))
        if self.hnsw is not None:
            return SearchKnob("ef_search", k, max(k, min(MAX_EF_SEARCH, int(self.index.ntotal))))
        return None

    def rerank_depth(self, k: int) -> int | None:
        factor = self._option("rerank")
        return None if factor is None else int(factor) * k

    def _search_values(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        values = {name: self._option(name) for name in SEARCH_OPTIONS}
        for name, value in (params or {}).items():
            if name not in SEARCH_OPTIONS:
                raise ValueError(f"unknown {self.name} search parameter {name!r}; valid: {', '.join(SEARCH_OPTIONS)}")
            values[name] = _positive_int(name, value, allow_none=name == "quantizer_ef_search")
        return values

    def _selector(self, allowed: Any, banned: set[int], keep: list[Any]) -> Any:
        """An IDSelector over our keys passing the ``allowed`` selector (None: all) minus ``banned``."""
        faiss = _faiss()
        if not banned:
            return allowed
        batch = faiss.IDSelectorBatch(np.fromiter(banned, dtype=np.int64, count=len(banned)))
        selector = faiss.IDSelectorNot(batch)
        keep += [batch, selector]
        if allowed is not None:
            selector = faiss.IDSelectorAnd(allowed, selector)
            keep.append(selector)
        return selector

    def _base_params(self, selector: Any, values: Mapping[str, Any], keep: list[Any]) -> Any:
        faiss = _faiss()
        if self.ivf is not None:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=min(values["nprobe"], self.ivf.nlist))
            if self.hnsw_quantizer is not None and values["quantizer_ef_search"] is not None:
                quantizer = faiss.SearchParametersHNSW(efSearch=values["quantizer_ef_search"])
                keep.append(quantizer)
                params.quantizer_params = quantizer
            return params
        if self.hnsw is not None:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=values["ef_search"])
        return faiss.SearchParameters(sel=selector)

    def _params(self, allowed: Any, banned: set[int], values: Mapping[str, Any]) -> tuple[Any, list[Any]]:
        """Search parameters for one call, and objects that must outlive the call."""
        faiss = _faiss()
        keep: list[Any] = []
        selector = self._selector(allowed, banned, keep)
        if self.refine is None:
            return self._base_params(selector, values, keep), keep  # IndexIDMap translates our keys itself
        # IndexRefine hands only base_index_params down, untranslated: map keys to rows ourselves
        if selector is not None and self.idmap is not None:
            selector = faiss.IDSelectorTranslated(self.idmap.id_map, selector)
            keep.append(selector)
        base = self._base_params(selector, values, keep)
        keep.append(base)
        return faiss.IndexRefineSearchParameters(k_factor=float(values["k_factor"]), base_index_params=base), keep

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None,
               restrict: Restriction | None = None, params: Mapping[str, Any] | None = None) -> SearchOutput:
        queries = self.check_queries(queries, k)
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        values = self._search_values(params)
        if self.hnsw is not None:
            values["ef_search"] = max(values["ef_search"], k)
        self._train_and_flush()
        if self.index.ntotal == 0 or (restrict is not None and len(restrict.keys) == 0):
            return empty_results(len(queries), k)
        allowed = None  # one selector of the passing keys, shared by every query of the call
        if restrict is not None:
            allowed = _faiss().IDSelectorBatch(np.ascontiguousarray(restrict.keys, dtype=np.int64))
        if exclude is None or not any(len(e) for e in exclude):
            search_params, _keep = self._params(allowed, self.tombstones, values)
            scores, keys = self.index.search(queries, k, params=search_params)
        else:  # each query hides its own keys: search one at a time
            scores, keys = empty_results(len(queries), k)
            for row, banned in enumerate(exclude):
                search_params, _keep = self._params(allowed, self.tombstones | {int(b) for b in banned}, values)
                scores[row : row + 1], keys[row : row + 1] = self.index.search(queries[row : row + 1], k, params=search_params)
        if self.hnsw is not None and self.tombstones and restrict is None:
            self._search_deeper(queries, k, exclude, values, scores, keys)
        scores = scores.astype(np.float32, copy=False)
        scores[keys < 0] = -np.inf
        return scores, keys.astype(np.int64, copy=False)


    def _search_deeper(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None,
                       values: Mapping[str, Any], scores: np.ndarray, keys: np.ndarray) -> None:
        """Re-search (in place) rows that came back short while live results remain: deleted
        graph nodes used up the candidate list. efSearch doubles up to the node count."""
        live = len(self)
        for row in range(len(queries)):
            banned = {int(b) for b in (exclude[row] if exclude is not None else ())}
            wanted = min(k, live - len(banned))
            deeper = dict(values)
            while int((keys[row] >= 0).sum()) < wanted and deeper["ef_search"] < self.index.ntotal:
                deeper["ef_search"] = min(2 * deeper["ef_search"], int(self.index.ntotal))
                search_params, _keep = self._params(None, self.tombstones | banned, deeper)
                scores[row : row + 1], keys[row : row + 1] = self.index.search(queries[row : row + 1], k, params=search_params)


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
