"""Building and updating an index from a catalogue, resumable after a kill.

``index_catalogue`` encodes every catalogue image that the index does not hold yet with
the model's target encoder (``method.encode_images`` then ``method.embed_targets``) in
shards of ``shard_size`` images. Each finished shard is written to ``IDX/build/``
atomically (vectors and reference features first, then the id list that marks it
complete), so a job that is killed and started again re-encodes only the shards it had
not finished. When every shard is done they are committed into the index in one
generation and ``build/`` is removed. Shards made by another model (another fingerprint)
are discarded.

Bad files (``on_error="skip"``, the default): images that cannot be read are left out,
the run goes on, and ``IDX/ingest-report.json`` lists each one (path, id, reason,
message); ``on_error="fail"`` stops at the first one. Backend preconditions (e.g. IVF
lists vs the number of images) are checked before anything is encoded.

Sharded (torchrun): with a ``sharding`` of several ranks every rank calls
``index_catalogue``; rank 0 plans the shards, every rank encodes its share, rank 0 alone
writes, reports and commits, so the index equals a single-process one.

Reference features: the ``method.encode_images`` features of every image are stored
with the index (``reference_features="auto"``: when they take at most
``REFERENCE_FEATURES_MAX_BYTES`` per image) so queries by gallery id skip the encoder.
"""
from __future__ import annotations

import json
import logging
import shutil
import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import ImageLoadError
from ..methods.hub import model_reference
from .catalogue import Catalogue, CatalogueEntry, SkippedImage, check_on_error
from .files import atomic_save_npy, atomic_write, atomic_write_json
from .index import get_backend
from .retriever import MASK_KEY
from .store import MANIFEST, IndexStore, acquire_writer_lock, model_description, model_fingerprint, release_writer_lock

if TYPE_CHECKING:
    from ..encoding.features import Sharding
    from ..methods.base import CIRMethod

log = logging.getLogger(__name__)

BUILD = "build"
JOB_FILE = "job.json"
SEGMENT_ROWS = 65536  # shards are grouped into segments of about this many rows at commit
REPORT_FILE = "ingest-report.json"
REFERENCE_FEATURES_MAX_BYTES = 64 * 1024  # "auto" keeps reference features up to this size per image
ReferenceFeatures = Literal["auto", "on", "off"]


@dataclass
class IndexReport:
    """What an ``index_catalogue`` call did."""

    index_dir: Path
    added: int
    already_indexed: int
    encoded_shards: int
    reused_shards: int
    total: int
    skipped: list[SkippedImage] = field(default_factory=list)
    report_file: Path | None = None
    reference_features: bool = False


@dataclass
class Shard:
    """A finished shard in ``build/``: ``ids`` and the file holding their (n, D) vectors."""

    number: int
    ids: list[str]
    vectors_file: Path
    skipped: list[SkippedImage] = field(default_factory=list)

    def load(self) -> np.ndarray:
        return np.load(self.vectors_file)

    def load_features(self) -> dict[str, np.ndarray] | None:
        """The shard's reference features (name -> (n, ...)), or None when not kept."""
        path = _features_path(self.vectors_file.parent, self.number)
        if not path.is_file():
            return None
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}


def _shard_paths(build: Path, number: int) -> tuple[Path, Path]:
    return build / f"shard-{number:06d}.npy", build / f"shard-{number:06d}.json"


def _features_path(build: Path, number: int) -> Path:
    return build / f"shard-{number:06d}.features.npz"


def finished_shards(build: Path, fingerprint: str) -> list[Shard]:
    """Complete shards of a previous run with this ``fingerprint`` (others are discarded)."""
    job = build / JOB_FILE
    if not job.is_file():
        shutil.rmtree(build, ignore_errors=True)
        return []
    previous = json.loads(job.read_text()).get("fingerprint")
    if previous != fingerprint:
        log.warning("discarding %s: its shards were encoded by another model (fingerprint %s)", build, previous)
        shutil.rmtree(build, ignore_errors=True)
        return []
    shards = []
    for ids_file in sorted(build.glob("shard-*.json")):
        number = int(ids_file.stem.split("-")[1])
        vectors_file, _ = _shard_paths(build, number)
        if vectors_file.is_file():  # the id list is written last: its presence marks completion
            payload = json.loads(ids_file.read_text())
            skipped = [SkippedImage(**item) for item in payload.get("skipped", [])]
            shards.append(Shard(number, payload["ids"], vectors_file, skipped))
    return shards


@dataclass
class EncodedShard:
    """What encoding a list of entries gave: the readable ones' ids, target vectors
    (n, D), reference features (name -> (n, ...), when asked) and the skipped ones."""

    ids: list[str]
    vectors: np.ndarray
    features: dict[str, np.ndarray] | None
    skipped: list[SkippedImage]


@torch.no_grad()
def encode_shard(method: "CIRMethod", catalogue: Catalogue, entries: Sequence[CatalogueEntry],
                 batch_size: int = 64, device: torch.device | str = "cpu", num_workers: int = 0,
                 on_error: str = "fail", keep_features: bool = False, precision: str = "fp32") -> EncodedShard:
    """Encode catalogue entries (``precision`` resolved); ``on_error="skip"`` leaves
    unreadable images out (listed in ``skipped``) instead of raising ImageLoadError."""
    from ..encoding.features import encode_images, method_transform
    from ..encoding.precision import autocast

    ids: list[str] = []
    parts: list[np.ndarray] = []
    features: dict[str, list[np.ndarray]] = {}
    skipped: list[SkippedImage] = []
    paths = {e.image_id: str(e.path) for e in entries}

    def collect(batch_ids: list[str], feats: Mapping[str, torch.Tensor]) -> None:
        with autocast(precision, device):
            target = method.embed_targets({k: v.to(device) for k, v in feats.items()})
        parts.append(target.float().cpu().numpy())
        ids.extend(batch_ids)
        if keep_features:
            for name, tensor in feats.items():
                features.setdefault(name, []).append(tensor.float().cpu().numpy())

    def skip(image_id: str, reason: str, message: str) -> None:
        log.warning("skipped %s", message)
        skipped.append(SkippedImage(paths[image_id], reason, message, image_id))

    _, transform = method_transform(method)
    try:
        encode_images(method, catalogue.as_dataset(), [e.image_id for e in entries], transform, batch_size,
                      device, num_workers, on_batch=collect, desc="encode shard", precision=precision,
                      on_error=skip if on_error == "skip" else None)
    except ImageLoadError as err:
        raise ImageLoadError(f"{err} (--on-error skip indexes the other images and lists the bad ones)",
                             err.reason) from None
    vectors = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    kept = {name: np.concatenate(chunks) for name, chunks in features.items()} if keep_features and parts else None
    return EncodedShard(ids, vectors, kept, skipped)


def encode_entries(method: "CIRMethod", catalogue: Catalogue, entries: Sequence[CatalogueEntry],
                   batch_size: int = 64, device: torch.device | str = "cpu", num_workers: int = 0,
                   precision: str = "fp32") -> np.ndarray:
    """Target embeddings (len(entries), D) float32 of catalogue entries (``precision``
    resolved; every image must be readable)."""
    return encode_shard(method, catalogue, entries, batch_size, device, num_workers, precision=precision).vectors


def _features_fit(features: Mapping[str, np.ndarray] | None) -> bool:
    """Whether reference features take at most REFERENCE_FEATURES_MAX_BYTES per image."""
    if not features:
        return False
    per_image = sum(int(np.prod(array.shape[1:])) * 4 for array in features.values())
    return per_image <= REFERENCE_FEATURES_MAX_BYTES


@torch.no_grad()
def _embedding_dim(method: "CIRMethod", device: torch.device | str) -> int:
    """The target embedding size, from one blank image (before any real image is encoded)."""
    size = method.backbone.image_size
    pixels = torch.zeros(1, 3, size, size, device=device)
    masks = pixels if method.requirements.needs_masks else None
    return int(method.embed_targets(method.encode_images(pixels, masks)).shape[-1])


def check_backend_preconditions(method: "CIRMethod", backend: str, options: Mapping[str, Any] | None,
                                count: int, device: torch.device | str = "cpu") -> None:
    """ValueError now, before encoding, when ``backend``/``options`` cannot index ``count``
    images (an unknown option, a bad factory string, more IVF lists than images ...)."""
    get_backend(backend).check_build(dict(options or {}), count, lambda: _embedding_dim(method, device))


def index_catalogue(
    method: "CIRMethod",
    catalogue: Catalogue,
    out_dir: str | Path,
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    shard_size: int = 1024,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    on_shard: Callable[[int], None] | None = None,
    model_dir: str | Path | None = None,
    precision: str = "fp32",
    on_error: str = "skip",
    reference_features: ReferenceFeatures = "auto",
    sharding: "Sharding | None" = None,
) -> IndexReport:
    """Create ``out_dir`` or add the catalogue's new images to it (resuming a killed job).

    ``backend``/``backend_options`` apply when the index is created (default ``exact``);
    an existing index keeps its own. ``on_shard(n)`` is called after shard ``n`` is on disk.
    ``model_dir`` (where ``method`` was loaded from) is recorded so that search and serve
    can find the model without being told. ``precision`` (``fp32``, ``bf16``, ``auto`` ...,
    see ``encoding.precision``) is the compute precision of the image encoder; it is
    recorded in the manifest, and shards of a killed job are reused only at the same one.
    ``on_error``: ``skip`` unreadable images (and list them in ``IDX/ingest-report.json``)
    or ``fail`` at the first one. ``reference_features``: store the images' reference-side
    features (``auto``: when they are small, see REFERENCE_FEATURES_MAX_BYTES); applies
    when the index is created. They are keyed by the fingerprint and the precision: a
    retriever (fp32) uses only features encoded at fp32, so its by-id queries equal the
    re-encoding path. With a ``sharding`` of several ranks (every rank calls this, e.g.
    ``opencir index`` under torchrun) the shards are encoded across ranks and rank 0 alone
    writes them and commits: the index equals a single-process one.
    """
    from ..encoding.precision import resolve_precision

    precision = resolve_precision(precision, device)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    check_on_error(on_error)
    if reference_features not in ("auto", "on", "off"):
        raise ValueError(f"reference_features must be auto, on or off, got {reference_features!r}")
    out = Path(out_dir)
    sharded = sharding is not None and sharding.world_size > 1
    if sharded and sharding.rank != 0:
        return _index_follower(method, catalogue, sharding, batch_size, device, num_workers, precision)
    try:
        lock = acquire_writer_lock(out)
        try:
            model = model_description(method)
            model["precision"] = precision
            if model_dir is not None:
                model["directory"] = model_reference(model_dir)
            report = _index_locked(method, catalogue, out, backend, backend_options, shard_size, batch_size,
                                   device, num_workers, on_shard, model, on_error, reference_features, precision,
                                   sharding if sharded else None)
        finally:
            release_writer_lock(lock)
    except Exception as err:
        if sharded:  # the other ranks wait for a plan or the report: tell them why there is none
            _send(sharding, ("error", f"rank 0: {err}"))
        raise
    if sharded:
        _send(sharding, ("report", report))
    return report


# ------------------------------------------------------------ sharded encoding
def _send(sharding: "Sharding", message: Any) -> Any:
    """Rank 0's ``message`` on every rank (a collective)."""
    return sharding.all_gather_object(message if sharding.rank == 0 else None)[0]


def _receive(sharding: "Sharding", expected: str) -> Any:
    kind, payload = _send(sharding, None)
    if kind == "error":
        raise ValueError(payload)
    if kind != expected:  # pragma: no cover - a protocol bug
        raise RuntimeError(f"expected {expected!r} from rank 0, got {kind!r}")
    return payload


@dataclass(frozen=True)
class _EncodeOptions:
    """How every rank encodes its shards (sent with the plan)."""

    batch_size: int
    num_workers: int
    precision: str
    on_error: str
    keep_features: bool


def _encode_work(method: "CIRMethod", catalogue: Catalogue, work: Sequence[tuple[int, Sequence[CatalogueEntry]]],
                 device: torch.device | str, options: _EncodeOptions,
                 sharding: "Sharding | None") -> Iterator[tuple[int, Sequence[CatalogueEntry], EncodedShard]]:
    """(number, entries, encoded) of every work item, in order (on rank 0 only when sharded:
    rank r encodes items r, r + W, ... and rank 0 receives them, one round of W at a time)."""
    def encode(chunk: Sequence[CatalogueEntry]) -> EncodedShard:
        return encode_shard(method, catalogue, chunk, options.batch_size, device, options.num_workers,
                            options.on_error, options.keep_features, options.precision)

    if sharding is None:
        for number, chunk in work:
            yield number, chunk, encode(chunk)
        return
    world = sharding.world_size
    for start in range(0, len(work), world):
        round_ = work[start:start + world]
        mine = round_[sharding.rank] if sharding.rank < len(round_) else None
        gathered = sharding.all_gather_object(encode(mine[1]) if mine else None)
        if sharding.rank == 0:
            for (number, chunk), encoded in zip(round_, gathered):
                yield number, chunk, encoded


def _index_follower(method: "CIRMethod", catalogue: Catalogue, sharding: "Sharding", batch_size: int,
                    device: torch.device | str, num_workers: int, precision: str) -> IndexReport:
    """A rank other than 0: encode this rank's share of rank 0's plan, return rank 0's report."""
    entries = {e.image_id: e for e in catalogue.entries}
    plan, options = _receive(sharding, "plan")
    work = [(number, [entries[i] for i in ids]) for number, ids in plan]
    method.eval()
    for _ in _encode_work(method, catalogue, work, device, options, sharding):
        pass
    return _receive(sharding, "report")


def _index_locked(method, catalogue, out, backend, backend_options, shard_size, batch_size, device,
                  num_workers, on_shard, model, on_error, reference_features, precision="fp32",
                  sharding=None) -> IndexReport:
    started = _now()
    fingerprint = model_fingerprint(method)
    # shards of a killed job (and stored reference features) are reused only when encoded
    # by the same model at the same precision
    job_key = fingerprint if precision == "fp32" else f"{fingerprint}+{precision}"
    store = IndexStore.open(out, writable=True, take_lock=False) if (out / MANIFEST).is_file() else None
    try:
        if store is not None:
            store.check_fingerprint(fingerprint, f"the {method.name!r} model")
            if backend is not None and backend != store.manifest["backend"]["name"]:
                log.warning("%s keeps its %r backend; --backend %s applies to new indexes only",
                            out, store.manifest["backend"]["name"], backend)
            keep: bool | None = store.manifest.get("reference_features_key") == job_key
        else:
            keep = {"on": True, "off": False, "auto": None}[reference_features]  # auto: decided on the first shard
        build = out / BUILD
        shards = finished_shards(build, job_key)
        in_shards = {i for s in shards for i in s.ids} | {k.image_id for s in shards for k in s.skipped}
        indexed = {e.image_id for e in catalogue.entries if store is not None and e.image_id in store}
        pending = [e for e in catalogue.entries if e.image_id not in indexed and e.image_id not in in_shards]
        if store is None and not shards:
            method.eval()
            check_backend_preconditions(method, backend or "exact", backend_options, len(pending), device)
        build.mkdir(parents=True, exist_ok=True)
        atomic_write_json(build / JOB_FILE, {"fingerprint": job_key})
        reused = len(shards)
        if shards:
            log.info("resuming: %d finished shards (%d images) found in %s", reused, len(in_shards), build)
            if keep is None:
                keep = _features_fit(shards[0].load_features())
        number = max((s.number for s in shards), default=-1) + 1
        method.eval()
        total = len(catalogue.entries) - len(indexed)
        work = [(number + i, pending[start : start + shard_size]) for i, start in enumerate(range(0, len(pending), shard_size))]
        options = _EncodeOptions(batch_size, num_workers, precision, on_error, keep_features=keep is not False)
        if sharding is not None:
            _send(sharding, ("plan", ([(n, [e.image_id for e in chunk]) for n, chunk in work], options)))
        with tqdm(total=total, initial=total - len(pending), desc=f"index {out.name}", unit="img", disable=None) as bar:
            for number, chunk, encoded in _encode_work(method, catalogue, work, device, options, sharding):
                if keep is None and encoded.ids:
                    keep = _features_fit(encoded.features)
                vectors_file, ids_file = _shard_paths(build, number)
                atomic_save_npy(vectors_file, encoded.vectors)
                if keep and encoded.features:
                    archive = encoded.features
                    atomic_write(_features_path(build, number), lambda tmp: _save_npz(tmp, archive))
                skipped = [k.to_dict() for k in encoded.skipped]
                atomic_write_json(ids_file, {"ids": encoded.ids, "skipped": skipped})
                shards.append(Shard(number, encoded.ids, vectors_file, encoded.skipped))
                bar.update(len(chunk))
                if on_shard is not None:
                    on_shard(number)
        skipped = list(catalogue.skipped) + [k for s in sorted(shards, key=lambda s: s.number) for k in s.skipped]
        report_file = out / REPORT_FILE
        try:
            store, added = _commit_shards(store, shards, catalogue, out, fingerprint, model, backend,
                                          backend_options, job_key if keep else None)
        except NothingToIndex:
            _write_report(report_file, catalogue, on_error, started, 0, len(indexed), skipped)
            raise ValueError(f"none of the {len(catalogue.entries) + len(catalogue.skipped)} catalogue images "
                             f"could be read; see {report_file}") from None
        shutil.rmtree(build, ignore_errors=True)
        _write_report(report_file, catalogue, on_error, started, added, len(indexed), skipped)
        return IndexReport(out, added, len(indexed), len(shards) - reused, reused, len(store), skipped, report_file,
                           bool(store.manifest.get("reference_features_key")))
    finally:
        if store is not None:
            store.close()


class NothingToIndex(ValueError):
    """No readable image to create an index from."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _write_report(path: Path, catalogue: Catalogue, on_error: str, started: str, added: int,
                  already: int, skipped: Sequence[SkippedImage]) -> None:
    """``ingest-report.json``: what the last ``opencir index`` run added and skipped."""
    reasons: dict[str, int] = {}
    for item in skipped:
        reasons[item.reason] = reasons.get(item.reason, 0) + 1
    atomic_write_json(path, {
        "catalogue": str(catalogue.source), "on_error": on_error, "started": started, "finished": _now(),
        "added": added, "already_indexed": already, "skipped_count": len(skipped), "skipped_by_reason": reasons,
        "skipped": [item.to_dict() for item in skipped],
    })


def _commit_shards(store: IndexStore | None, shards: list[Shard], catalogue: Catalogue, out: Path,
                   fingerprint: str, model: Mapping[str, Any], backend: str | None,
                   backend_options: Mapping[str, Any] | None,
                   features_key: str | None = None) -> tuple[IndexStore, int]:
    """Move the shards' vectors (and, with a ``features_key``, their reference features)
    into the index (one new generation); returns (store, added)."""
    keep_features = features_key is not None
    entries = {e.image_id: e for e in catalogue.entries}
    ids: list[str] = []
    parts: list[np.ndarray] = []
    feature_parts: list[dict[str, np.ndarray] | None] = []
    added = 0

    def flush() -> None:
        nonlocal store, added
        if not ids:
            return
        vectors = np.concatenate(parts)
        if store is None:
            store = IndexStore.create(out, vectors.shape[1], backend or "exact", backend_options,
                                      fingerprint, model, take_lock=False, reference_features_key=features_key)
        features = None
        if keep_features and all(f is not None for f in feature_parts):
            features = {name: np.concatenate([f[name] for f in feature_parts]) for name in feature_parts[0]}
        chosen = [entries[i] for i in ids]
        store.add(ids, vectors, [str(e.path) for e in chosen], [_metadata(e) for e in chosen], features)
        added += len(ids)
        ids.clear()
        parts.clear()
        feature_parts.clear()

    given = store
    try:
        for shard in sorted(shards, key=lambda s: s.number):
            vectors = shard.load()
            # keep only images still in the catalogue and not yet indexed (a crash may have
            # happened after a previous commit but before build/ was removed)
            keep = [row for row, i in enumerate(shard.ids) if i in entries and (store is None or i not in store)]
            if not keep:
                continue
            ids.extend(shard.ids[row] for row in keep)
            parts.append(vectors[keep])
            features = shard.load_features() if keep_features else None
            feature_parts.append({k: v[keep] for k, v in features.items()} if features is not None else None)
            if len(ids) >= SEGMENT_ROWS:
                flush()
        flush()
        if store is None:
            raise NothingToIndex("the catalogue has no images to index")
        store.commit()
    except BaseException:
        if store is not None and store is not given:
            store.close()
        raise
    return store, added


def _metadata(entry: CatalogueEntry) -> dict[str, Any] | None:
    """Stored metadata: the catalogue's extra columns, plus the mask path when there is one."""
    if entry.mask_path is None:
        return entry.metadata
    return {**(entry.metadata or {}), MASK_KEY: str(entry.mask_path)}


def delete_images(index_dir: str | Path, ids: Sequence[str], lock_timeout: float = 0.0) -> int:
    """Remove ``ids`` from an index (one new generation); returns the new image count."""
    lock = acquire_writer_lock(index_dir, lock_timeout) if (Path(index_dir) / MANIFEST).is_file() else None
    try:
        with IndexStore.open(index_dir, writable=True, take_lock=lock is None) as store:
            store.delete(list(dict.fromkeys(ids)))
            store.commit()
            return len(store)
    finally:
        if lock is not None:
            release_writer_lock(lock)


def add_entries(index_dir: str | Path, method: "CIRMethod", entries: Sequence[CatalogueEntry],
                lock_timeout: float = 0.0, device: torch.device | str = "cpu", batch_size: int = 64) -> int:
    """Encode ``entries`` (every image must be readable) and add them to an existing index
    in one new generation, under the writer lock (waiting up to ``lock_timeout`` s); the
    reference features are kept when the index keeps them. Returns the new image count.
    ``IDX/build/`` (a resumable CLI job) is left alone."""
    index_dir = Path(index_dir)
    lock = acquire_writer_lock(index_dir, lock_timeout)
    try:
        with IndexStore.open(index_dir, writable=True, take_lock=False) as store:
            fingerprint = model_fingerprint(method)
            store.check_fingerprint(fingerprint, f"the {method.name!r} model")
            clash = [e.image_id for e in entries if e.image_id in store]
            if clash:
                raise ValueError(f"image ids already in the index: {clash[:10]}; delete them first to replace them")
            keep = store.manifest.get("reference_features_key") == fingerprint
            catalogue = Catalogue(index_dir, list(entries))
            was_training = method.training
            method.eval()
            try:
                encoded = encode_shard(method, catalogue, entries, batch_size, device, keep_features=keep)
            finally:
                method.train(was_training)
            store.add(encoded.ids, encoded.vectors, [str(e.path) for e in entries], [_metadata(e) for e in entries],
                      encoded.features)
            store.commit()
            return len(store)
    finally:
        release_writer_lock(lock)
