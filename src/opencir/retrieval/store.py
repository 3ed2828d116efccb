"""The index directory: vectors, image ids/paths/metadata, backend state and a manifest.

Layout of ``IDX/``::

    manifest.json             written last, atomically: names everything below that is live
    data/seg-<hex>.npy        immutable (n, D) float32 vector segments (the source of truth)
    data/records-<gen>.json   columns: image ids, int64 keys, paths, metadata, segment + row
    data/feat-<hex>-<j>.npy   reference-side image features of a segment's rows (optional)
    data/<backend>-<gen>.*    backend state (e.g. the FAISS index file) of generation <gen>
    build/                    shards of an unfinished ``opencir index`` job (see indexing.py)
    .lock                     held by the one process allowed to write (see locking.py)

Every commit writes new files for a new generation and then replaces ``manifest.json``;
the manifest records the size and SHA-256 of every file it names (integrity.py). Files
named by neither the new manifest nor the previous one are deleted afterwards: a reader
that read the previous manifest an instant before the commit still finds all its files,
and a reader that loses a longer race opens again with the newer manifest, so readers
never see a half-committed generation. A crash at any point leaves the previous manifest,
and with it a complete previous index, in place.

Reference features: methods compose queries from ``method.encode_images`` features of the
reference image. Indexing computes those features for every catalogue image anyway (the
target embedding is ``embed_targets`` of them), so they can be stored next to the vectors,
keyed by the model fingerprint, and queries by gallery id skip the image encoder.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import IndexDamagedError
from .files import atomic_save_npy, atomic_write_json
from .filters import FilterSpec, MetadataColumns, normalise_metadata, parse_filter
from .index import DATA_DIR, IndexBackend, Restriction, get_backend
from .integrity import check_manifest, file_entry, manifest_checksum, verify_files
from .locking import LOCK, WriterLock, acquire_writer_lock, release_writer_lock

if TYPE_CHECKING:
    from ..methods.base import CIRMethod

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: file checksums and stored reference features
MANIFEST = "manifest.json"
DATA = DATA_DIR
OPEN_ATTEMPTS = 10  # opens that lose a race with committing writers are retried this often


class FingerprintMismatch(ValueError):
    """The model given does not produce the embeddings stored in the index."""


# --------------------------------------------------------------------- model identity
def model_description(method: "CIRMethod") -> dict[str, Any]:
    """What an index records about the model that embedded its images."""
    from ..encoding.features import method_transform

    return {
        "method": method.name,
        "method_config": method.config.to_dict(),
        "backbone": method.backbone.spec.to_dict(),
        "backbone_fingerprint": method.backbone.fingerprint(),
        "image_transform": method_transform(method)[0],
        "image_size": method.backbone.image_size,
    }


def model_fingerprint(method: "CIRMethod") -> str:
    """Identifies the embeddings a model produces: the feature key of
    ``encoding.features`` (backbone weight fingerprint, method name + config,
    preprocessing) combined with a hash of the method's own (non-backbone) weights."""
    from ..encoding.features import feature_cache_key, method_transform

    digest = hashlib.sha256(feature_cache_key(method, method_transform(method)[0]).encode())
    for name, tensor in sorted(method.state_dict().items()):
        if not name.startswith("backbone."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Record:
    """One indexed image."""

    image_id: str
    key: int
    path: str
    metadata: dict[str, Any] | None = None


@dataclass
class RecordTable:
    """Columns of the indexed images; row i describes ``ids[i]``."""

    ids: list[str] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    metadata: list[dict[str, Any] | None] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reindex()

    def _reindex(self) -> None:
        self.position = {image_id: i for i, image_id in enumerate(self.ids)}
        self.key_position = {key: i for i, key in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.ids)

    def record(self, i: int) -> Record:
        return Record(self.ids[i], self.keys[i], self.paths[i], self.metadata[i])

    def append(self, ids: Sequence[str], keys: Sequence[int], paths: Sequence[str],
               metadata: Sequence[dict[str, Any] | None], segment: int) -> None:
        start = len(self.ids)
        self.ids += list(ids)
        self.keys += [int(k) for k in keys]
        self.paths += [str(p) for p in paths]
        self.metadata += list(metadata)
        self.segments += [segment] * len(ids)
        self.rows += list(range(len(ids)))
        for i in range(start, len(self.ids)):
            self.position[self.ids[i]] = i
            self.key_position[self.keys[i]] = i

    def drop(self, ids: Iterable[str]) -> None:
        gone = {self.position[i] for i in ids}
        keep = [i for i in range(len(self.ids)) if i not in gone]
        for name in ("ids", "keys", "paths", "metadata", "segments", "rows"):
            column = getattr(self, name)
            setattr(self, name, [column[i] for i in keep])
        self._reindex()

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("ids", "keys", "paths", "metadata", "segments", "rows")}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], source: Path) -> "RecordTable":
        try:
            table = cls(**{name: list(payload[name]) for name in ("ids", "keys", "paths", "metadata", "segments", "rows")})
        except (KeyError, TypeError) as err:
            raise ValueError(f"{source} is not a valid records file: {err}") from None
        lengths = {len(getattr(table, n)) for n in ("ids", "keys", "paths", "metadata", "segments", "rows")}
        if len(lengths) != 1:
            raise ValueError(f"{source}: record columns have different lengths")
        return table


# ----------------------------------------------------------------------------- store
def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed manifest of an index directory, with errors that say what to do."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        hint = ""
        if (directory / "build").is_dir():
            hint = "; an indexing job was interrupted there: rerun the same `opencir index` command to resume it"
        raise FileNotFoundError(f"{directory} is not an OpenCIR index directory: {MANIFEST} is missing{hint}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    for key in ("format_version", "generation", "dim", "backend", "fingerprint", "records_file", "segments"):
        if key not in manifest:
            raise ValueError(f"{path} has no {key!r} field; is it an OpenCIR index?")
    if manifest["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {manifest['format_version']}; this OpenCIR reads <= {FORMAT_VERSION}")
    check_manifest(manifest, path)
    return manifest


def _identity(manifest: Mapping[str, Any]) -> Any:
    """What tells two generations apart (format 1 manifests have no checksum)."""
    return manifest.get("checksum") or (manifest["generation"], manifest.get("updated"))


def manifest_files(manifest: Mapping[str, Any], backend: IndexBackend | None = None) -> list[str]:
    """Every file (relative to the index root) that a manifest's generation uses."""
    names = [f"{DATA}/{name}" for name in manifest["segments"]]
    if manifest.get("records_file"):
        names.append(f"{DATA}/{manifest['records_file']}")
    for files in manifest.get("segment_features", {}).values():
        names += [f"{DATA}/{name}" for name in files.values()]
    if backend is not None:
        names += backend.state_files(manifest["backend"]["state"])
    else:
        names += [n for n in manifest.get("files", {}) if n not in names]
    return names


def verify_index(directory: str | Path, full: bool = True) -> dict[str, Any]:
    """Check every file of the committed index (``full``: their SHA-256 too) and that it
    opens; IndexDamagedError names the first damaged file. Returns a summary."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = manifest.get("files")
    if files is None:
        raise ValueError(f"{directory} was written by an OpenCIR without checksums (format_version "
                         f"{manifest['format_version']}); nothing to verify against: rebuild it to get them")
    hashed = verify_files(directory, files, full=full)
    with IndexStore.open(directory):
        pass
    return {"index": str(directory), "generation": manifest["generation"], "files": len(files),
            "hashed": len(hashed), "bytes": sum(int(e["size"]) for e in files.values()), "ok": True}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class IndexStore:
    """An index directory opened for search (and, with ``writable``, for add/delete/commit)."""

    def __init__(self, directory: Path, manifest: dict[str, Any], records: RecordTable,
                 backend: IndexBackend, writable: bool, take_lock: bool = True) -> None:
        self.directory = directory
        self.manifest = manifest
        self.records = records
        self.backend = backend
        self.writable = writable
        self._lock: WriterLock | None = None
        self._segments: list[str] = list(manifest["segments"])
        self._segment_features: dict[str, dict[str, str]] = {k: dict(v) for k, v in manifest.get("segment_features", {}).items()}
        self._files: dict[str, dict[str, Any]] = dict(manifest.get("files", {}))
        self._arrays: dict[str, np.ndarray] = {}
        self._next_key = int(manifest.get("next_key", 0))
        self._dirty = False
        self._columns: MetadataColumns | None = None  # metadata filters: built on first use
        self._filter_keys: dict[str, np.ndarray] = {}
        # map every data file now: a reader keeps its generation's data even after a
        # writer's garbage collection has unlinked the files (POSIX)
        for name in self._segments:
            self._array(name)
        for files in self._segment_features.values():
            for name in files.values():
                self._array(name)
        if writable and take_lock:
            self._lock = acquire_writer_lock(directory)

    def _array(self, name: str) -> np.ndarray:
        """The memory-mapped data file ``data/<name>``."""
        array = self._arrays.get(name)
        if array is None:
            path = self.directory / DATA / name
            try:
                array = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                raise IndexDamagedError(f"index file {path} is missing; the index directory {self.directory} is damaged") from None
            except ValueError as err:
                raise IndexDamagedError(f"index file {path} is damaged: {err}") from None
            self._arrays[name] = array
        return array

    # ------------------------------------------------------------ open / create
    @classmethod
    def create(cls, directory: str | Path, dim: int, backend: str, backend_options: Mapping[str, Any] | None,
               fingerprint: str, model: Mapping[str, Any], take_lock: bool = True,
               reference_features_key: str | None = None) -> "IndexStore":
        """A new, empty, writable index; nothing is on disk until ``commit``. With a
        ``reference_features_key`` (what produced them: the model fingerprint, plus the
        precision when not fp32) the reference-side features given to ``add`` are stored."""
        directory = Path(directory)
        if (directory / MANIFEST).exists():
            raise FileExistsError(f"{directory} already holds an index; open it to add images")
        (directory / DATA).mkdir(parents=True, exist_ok=True)
        backend_cls = get_backend(backend)
        instance = backend_cls.create(dim, dict(backend_options or {}), directory)
        manifest = {
            "format_version": FORMAT_VERSION,
            "generation": 0,
            "dim": int(dim),
            "count": 0,
            "next_key": 0,
            "backend": {"name": backend, "options": instance.options, "state": {}},
            "fingerprint": fingerprint,
            "model": dict(model),
            "records_file": None,
            "segments": [],
            "segment_features": {},
            "reference_features_key": reference_features_key,
            "files": {},
            "created": _now(),
        }
        try:
            return cls(directory, manifest, RecordTable(), instance, writable=True, take_lock=take_lock)
        except BaseException:
            instance.close()
            raise

    @classmethod
    def open(cls, directory: str | Path, writable: bool = False, take_lock: bool = True) -> "IndexStore":
        """Open the committed index in ``directory`` (its newest generation).

        Files are checked against the manifest's checksums (sizes, and full hashes of small
        files). An open that races a committing writer and finds its generation's files
        gone reads the newer manifest and tries again, so it never fails spuriously."""
        directory = Path(directory)
        if writable and take_lock:  # lock first: the generation read must be the one we write on
            if not (directory / MANIFEST).is_file():
                read_manifest(directory)  # the clear "not an index" error, before creating a lock file
            lock = acquire_writer_lock(directory)
            try:
                store = cls.open(directory, writable=True, take_lock=False)
            except BaseException:
                release_writer_lock(lock)
                raise
            store._lock = lock
            return store
        for attempt in range(OPEN_ATTEMPTS):
            manifest = read_manifest(directory)
            try:
                return cls._open_generation(directory, manifest, writable, take_lock)
            except Exception:  # noqa: BLE001 - a backend reports a file removed under it as any error (FAISS: RuntimeError)
                newer = read_manifest(directory)
                if _identity(newer) == _identity(manifest) or attempt == OPEN_ATTEMPTS - 1:
                    raise  # the generation itself is damaged, not replaced under us
                log.debug("generation %s of %s was replaced while opening; retrying", manifest["generation"], directory)
        raise AssertionError("unreachable")

    @classmethod
    def _open_generation(cls, directory: Path, manifest: dict[str, Any], writable: bool, take_lock: bool) -> "IndexStore":
        files = manifest.get("files", {})
        verify_files(directory, files)
        records_path = directory / DATA / manifest["records_file"]
        try:
            records = RecordTable.from_json(json.loads(records_path.read_text()), records_path)
        except FileNotFoundError:
            raise IndexDamagedError(f"{records_path} is missing; the index directory {directory} is damaged") from None
        except json.JSONDecodeError as err:
            raise IndexDamagedError(f"{records_path} is damaged: {err}") from None
        spec = manifest["backend"]
        backend = get_backend(spec["name"]).load(manifest["dim"], spec["options"], spec["state"], directory)
        try:
            return cls(directory, manifest, records, backend, writable, take_lock)
        except BaseException:
            backend.close()
            raise

    def close(self) -> None:
        """Release the backend and the writer lock (uncommitted changes are dropped)."""
        self.backend.close()
        self._arrays.clear()
        if self._lock is not None:
            release_writer_lock(self._lock)
            self._lock = None

    def __enter__(self) -> "IndexStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ queries
    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.records.position

    def get(self, image_id: str) -> Record:
        """The record of ``image_id``; KeyError names the index when it is unknown."""
        try:
            return self.records.record(self.records.position[image_id])
        except KeyError:
            raise KeyError(f"image id {image_id!r} is not in the index {self.directory}") from None

    def ids(self) -> list[str]:
        return list(self.records.ids)

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored (len(ids), D) float32 embeddings of ``ids``, read from the segments."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for i, image_id in enumerate(ids):
            pos = self.records.position.get(image_id)
            if pos is None:
                raise KeyError(f"image id {image_id!r} is not in the index {self.directory}")
            out[i] = self._array(self._segments[self.records.segments[pos]])[self.records.rows[pos]]
        return out

    def reference_features(self, image_id: str, key: str) -> dict[str, np.ndarray] | None:
        """The stored ``method.encode_images`` features of ``image_id`` as (1, ...) float32
        arrays, or None when they were not stored or ``key`` (the model fingerprint of the
        asking model) is not the one they were computed with."""
        if key != self.manifest.get("reference_features_key"):
            return None
        pos = self.records.position.get(image_id)
        if pos is None:
            raise KeyError(f"image id {image_id!r} is not in the index {self.directory}")
        files = self._segment_features.get(self._segments[self.records.segments[pos]])
        if not files:
            return None
        row = self.records.rows[pos]
        return {name: np.array(self._array(file)[row : row + 1]) for name, file in files.items()}

    def vectors_of_keys(self, keys: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored (len(keys), D) float32 embeddings of indexed keys, read segment by segment."""
        positions = [self.records.key_position[int(k)] for k in keys]
        segments = np.array([self.records.segments[p] for p in positions], dtype=np.int64)
        rows = np.array([self.records.rows[p] for p in positions], dtype=np.int64)
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        for seg in np.unique(segments):
            chosen = np.flatnonzero(segments == seg)
            name = self._segments[int(seg)]
            out[chosen] = self._array(name)[rows[chosen]]  # segment files are immutable: mapped once
        return out

    def check_fingerprint(self, fingerprint: str, model_name: str = "the model") -> None:
        """Refuse a model whose embeddings differ from the ones in this index."""
        if fingerprint != self.fingerprint:
            built = self.manifest.get("model", {})
            raise FingerprintMismatch(
                f"{model_name} (fingerprint {fingerprint}) is not the model that built the index {self.directory} "
                f"(fingerprint {self.fingerprint}, method {built.get('method')!r} on {built.get('backbone', {}).get('arch')!r}); "
                "its embeddings are not comparable: search with that model or build a new index with this one"
            )

    def restriction(self, where: FilterSpec) -> Restriction | None:
        """The keys passing a metadata filter (``filters.parse_filter`` spec), cached per filter."""
        parsed = parse_filter(where)
        if parsed is None:
            return None
        cache_key = parsed.canonical()
        if cache_key not in self._filter_keys:
            if self._columns is None:
                self._columns = MetadataColumns(self.records.keys, self.records.metadata)
            if len(self._filter_keys) >= 64:
                self._filter_keys.clear()
            self._filter_keys[cache_key] = self._columns.keys_matching(parsed)
        return Restriction(self._filter_keys[cache_key], parsed)

    def search(self, queries: np.ndarray, k: int, exclude_ids: Sequence[Iterable[str]] | None = None,
               where: FilterSpec = None, params: Mapping[str, Any] | None = None) -> list[list[tuple[Record, float]]]:
        """Top-``k`` records per query. queries (Q, D) float32; ``exclude_ids[i]`` are image
        ids never returned for query i (unknown ids are ignored); ``where`` keeps only images
        whose metadata passes the filter (see ``filters``), with no fewer than ``k`` results
        when ``k`` images pass, whatever the index; ``params`` overrides the backend's
        search-time options (e.g. ``{"nprobe": 64}``)."""
        from .rerank import rescore
        from .restricted import restricted_search

        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        exclude = None
        if exclude_ids is not None:
            position = self.records.position
            exclude = [[self.records.keys[position[i]] for i in ids if i in position] for ids in exclude_ids]
        restrict = self.restriction(where)
        if restrict is not None:
            return restricted_search(self, queries, k, exclude, restrict, params)
        k = min(k, len(self.records))
        if k == 0:
            return [[] for _ in range(len(queries))]
        depth = self.backend.rerank_depth(k)  # compressed index: re-score candidates exactly
        fetch = depth or k
        while True:
            scores, keys = self.backend.search(queries, fetch, exclude, params=params)
            if depth:
                scores, keys = rescore(self, queries, keys)
            results = [
                [(self.records.record(self.records.key_position[key]), float(score))
                 for score, key in zip(row_scores, row_keys) if key in self.records.key_position][:k]
                for row_scores, row_keys in zip(scores, keys.tolist())
            ]
            # keys unknown to the records (left by an interrupted external write) were dropped:
            # fetch deeper until every query has k results or the backend ran out
            short = any(len(r) < k and (row_keys >= 0).all() for r, row_keys in zip(results, keys))
            if not short or fetch >= 4 * k + 64:
                return results
            fetch = 2 * fetch + 16

    # ---------------------------------------------------------------- mutation
    def _check_writable(self) -> None:
        if not self.writable:
            raise RuntimeError(f"{self.directory} was opened read-only")

    def add(self, ids: Sequence[str], vectors: np.ndarray, paths: Sequence[str | Path],
            metadata: Sequence[dict[str, Any] | None] | None = None,
            features: Mapping[str, np.ndarray] | None = None) -> None:
        """Stage new images: ids (N,), vectors (N, D) float32 (L2-normalised), paths (N,);
        ``features``: their reference-side image features (name -> (N, ...) arrays), stored
        for queries by id when the index keeps them (``reference_features_key`` is set)."""
        self._check_writable()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        if len(paths) != len(ids) or (metadata is not None and len(metadata) != len(ids)):
            raise ValueError("ids, paths and metadata must have the same length")
        clash = [i for i in ids if i in self.records.position]
        if clash or len(set(ids)) != len(ids):
            raise ValueError(f"image ids already in the index (or repeated): {sorted(set(clash))[:10] or 'repeated ids'}; "
                             "delete them first to replace them")
        if len(ids) == 0:
            return
        if features is not None and any(len(f) != len(ids) for f in features.values()):
            raise ValueError("every reference feature array needs one row per image id")
        tag = uuid.uuid4().hex[:16]
        name = f"seg-{tag}.npy"
        self._write_data(name, vectors)
        if features and self.manifest.get("reference_features_key"):
            files = {}
            for j, (feature, values) in enumerate(sorted(features.items())):
                files[feature] = f"feat-{tag}-{j}.npy"
                self._write_data(files[feature], np.ascontiguousarray(values, dtype=np.float32))
            self._segment_features[name] = files
        keys = np.arange(self._next_key, self._next_key + len(ids), dtype=np.int64)
        stored = None
        if self.backend.stores_metadata:
            stored = [normalise_metadata(m) for m in metadata] if metadata is not None else [{}] * len(ids)
        self.backend.add(keys, vectors, stored)
        self._columns, self._filter_keys = None, {}
        self._segments.append(name)
        self.records.append(ids, keys.tolist(), [str(p) for p in paths],
                            list(metadata) if metadata is not None else [None] * len(ids), len(self._segments) - 1)
        self._next_key += len(ids)
        self._dirty = True

    def _write_data(self, name: str, array: np.ndarray) -> None:
        """Write the immutable data file ``data/<name>`` and record its checksum."""
        path = atomic_save_npy(self.directory / DATA / name, array)
        self._files[f"{DATA}/{name}"] = file_entry(path)

    def delete(self, ids: Sequence[str]) -> None:
        """Stage the removal of ``ids``; unknown ids raise KeyError naming them."""
        self._check_writable()
        unknown = [i for i in ids if i not in self.records.position]
        if unknown:
            raise KeyError(f"image ids not in the index {self.directory}: {unknown[:10]}")
        keys = np.array([self.records.keys[self.records.position[i]] for i in ids], dtype=np.int64)
        self.backend.remove(keys)
        self.records.drop(ids)
        self._columns, self._filter_keys = None, {}
        self._dirty = True

    def commit(self) -> None:
        """Write the staged changes as a new generation; the manifest goes last."""
        self._check_writable()
        if not self._dirty and self.manifest["records_file"] is not None:
            return
        data = self.directory / DATA
        generation = int(self.manifest["generation"]) + 1
        tag = f"{generation:06d}"
        used = sorted(set(self.records.segments))
        remap = {old: new for new, old in enumerate(used)}
        segments = [self._segments[i] for i in used]
        self.records.segments = [remap[s] for s in self.records.segments]
        self._segments = segments
        self._segment_features = {s: f for s, f in self._segment_features.items() if s in segments}
        if self.backend.compaction_due():
            self._rebuild_backend()
        records_file = f"records-{tag}.json"
        atomic_write_json(data / records_file, self.records.to_json())
        self._files[f"{DATA}/{records_file}"] = file_entry(data / records_file)
        state = self.backend.save(self.directory, tag)
        for name in self.backend.state_files(state):
            self._files[name] = file_entry(self.directory / name)
        manifest = {
            **self.manifest,
            "format_version": FORMAT_VERSION,
            "generation": generation,
            "count": len(self.records),
            "next_key": self._next_key,
            "backend": {**self.manifest["backend"], "state": state},
            "records_file": records_file,
            "segments": segments,
            "segment_features": self._segment_features,
            "updated": _now(),
        }
        manifest["files"] = {name: self._files.get(name) or file_entry(self.directory / name)  # (format 1: no record yet)
                             for name in manifest_files(manifest, self.backend)}
        manifest["checksum"] = manifest_checksum(manifest)
        previous = self.manifest
        atomic_write_json(self.directory / MANIFEST, manifest)
        self.manifest = manifest
        self._files = dict(manifest["files"])
        self._dirty = False
        self.backend.after_commit()
        self._collect_garbage(previous)

    def set_search_options(self, options: Mapping[str, Any], tuning: Mapping[str, Any] | None = None) -> None:
        """Persist search-time backend options (e.g. a tuned ``nprobe``) and the tuning report
        that chose them: a new generation whose manifest names the same data files."""
        self._check_writable()
        self.backend.options.update(options)
        manifest = {
            **self.manifest,
            "generation": int(self.manifest["generation"]) + 1,
            "backend": {**self.manifest["backend"], "options": dict(self.backend.options)},
            "updated": _now(),
        }
        if tuning is not None:
            manifest["tuning"] = dict(tuning)
        manifest["checksum"] = manifest_checksum(manifest)
        atomic_write_json(self.directory / MANIFEST, manifest)
        self.manifest = manifest

    def _rebuild_backend(self) -> None:
        """Rebuild the backend from the live vectors (e.g. an HNSW graph full of deleted nodes)."""
        keys = np.asarray(self.records.keys, dtype=np.int64)
        log.info("compacting the %s index of %s: rebuilding it from %d live vectors",
                 self.manifest["backend"]["name"], self.directory, len(keys))
        self.backend.rebuild(keys, self.vectors(self.records.ids))

    def _collect_garbage(self, previous: Mapping[str, Any]) -> None:
        """Delete data files named by neither the new nor the previous manifest (older
        generations, crash leftovers); the previous generation stays for racing readers."""
        data = self.directory / DATA
        live = {self.directory / name for name in manifest_files(self.manifest, self.backend)}
        if previous.get("records_file"):
            live |= {self.directory / name for name in manifest_files(previous, self.backend)}
        for path in data.iterdir():
            if path.is_file() and path not in live:
                try:
                    path.unlink()
                except OSError:  # e.g. still mapped by a reader on Windows: removed by a later commit
                    pass
