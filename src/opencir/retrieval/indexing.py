"""Building and updating an index from a catalogue, resumable after a kill.

``index_catalogue`` encodes every catalogue image that the index does not hold yet with
the model's target encoder (``method.encode_images`` then ``method.embed_targets``) in
shards of ``shard_size`` images. Each finished shard is written to ``IDX/build/``
atomically (vectors first, then the id list that marks it complete), so a job that is
killed and started again re-encodes only the shards it had not finished. When every
shard is done they are committed into the index in one generation and ``build/`` is
removed. Shards made by another model (another fingerprint) are discarded.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .catalogue import Catalogue, CatalogueEntry
from .files import atomic_save_npy, atomic_write_json
from .retriever import MASK_KEY
from .store import MANIFEST, IndexStore, acquire_writer_lock, model_description, model_fingerprint, release_writer_lock

if TYPE_CHECKING:
    from ..encoding.features import Sharding
    from ..methods.base import CIRMethod

log = logging.getLogger(__name__)

BUILD = "build"
JOB_FILE = "job.json"
SEGMENT_ROWS = 65536  # shards are grouped into segments of about this many rows at commit


@dataclass
class IndexReport:
    """What an ``index_catalogue`` call did."""

    index_dir: Path
    added: int
    already_indexed: int
    encoded_shards: int
    reused_shards: int
    total: int


@dataclass
class Shard:
    """A finished shard in ``build/``: ``ids`` and the file holding their (n, D) vectors."""

    number: int
    ids: list[str]
    vectors_file: Path

    def load(self) -> np.ndarray:
        return np.load(self.vectors_file)


def _shard_paths(build: Path, number: int) -> tuple[Path, Path]:
    return build / f"shard-{number:06d}.npy", build / f"shard-{number:06d}.json"


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
        if vectors_file.is_file():  # the id list is written second: its presence marks completion
            shards.append(Shard(number, json.loads(ids_file.read_text())["ids"], vectors_file))
    return shards


@torch.no_grad()
def encode_entries(method: "CIRMethod", catalogue: Catalogue, entries: Sequence[CatalogueEntry],
                   batch_size: int = 64, device: torch.device | str = "cpu", num_workers: int = 0,
                   precision: str = "fp32") -> np.ndarray:
    """Target embeddings (len(entries), D) float32 of catalogue entries (``precision`` resolved)."""
    from ..encoding.features import encode_images, method_transform
    from ..encoding.precision import autocast

    parts: list[np.ndarray] = []

    def collect(ids: list[str], feats: Mapping[str, torch.Tensor]) -> None:
        with autocast(precision, device):
            target = method.embed_targets({k: v.to(device) for k, v in feats.items()})
        parts.append(target.float().cpu().numpy())

    _, transform = method_transform(method)
    encode_images(method, catalogue.as_dataset(), [e.image_id for e in entries], transform, batch_size,
                  device, num_workers, on_batch=collect, desc="encode shard", precision=precision)
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


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
    sharding: "Sharding | None" = None,
) -> IndexReport:
    """Create ``out_dir`` or add the catalogue's new images to it (resuming a killed job).

    ``backend``/``backend_options`` apply when the index is created (default ``exact``);
    an existing index keeps its own. ``on_shard(n)`` is called after shard ``n`` is on disk.
    ``model_dir`` (where ``method`` was loaded from) is recorded so that search and serve
    can find the model without being told. ``precision`` (``fp32``, ``bf16``, ``auto`` ...,
    see ``encoding.precision``) is the compute precision of the image encoder; it is
    recorded in the manifest, and shards of a killed job are reused only at the same one.
    With a ``sharding`` of several ranks (every rank calls this, e.g. ``opencir index``
    under torchrun) the shards are encoded across ranks and rank 0 alone writes them and
    commits: the index equals a single-process one.
    """
    from ..encoding.precision import resolve_precision

    precision = resolve_precision(precision, device)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
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
                model["directory"] = str(Path(model_dir).resolve())
            report = _index_locked(method, catalogue, out, backend, backend_options, shard_size, batch_size,
                                   device, num_workers, on_shard, model, precision, sharding if sharded else None)
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


def _encode_work(method: "CIRMethod", catalogue: Catalogue, work: Sequence[tuple[int, Sequence[CatalogueEntry]]],
                 batch_size: int, device: torch.device | str, num_workers: int, precision: str,
                 sharding: "Sharding | None") -> Iterator[tuple[int, Sequence[CatalogueEntry], np.ndarray]]:
    """(number, entries, vectors) of every work item, in order (on rank 0 only when sharded:
    rank r encodes items r, r + W, ... and rank 0 receives them, one round of W at a time)."""
    if sharding is None:
        for number, chunk in work:
            yield number, chunk, encode_entries(method, catalogue, chunk, batch_size, device, num_workers, precision)
        return
    world = sharding.world_size
    for start in range(0, len(work), world):
        round_ = work[start:start + world]
        mine = round_[sharding.rank] if sharding.rank < len(round_) else None
        vectors = (encode_entries(method, catalogue, mine[1], batch_size, device, num_workers, precision)
                   if mine else None)
        gathered = sharding.all_gather_object(vectors)
        if sharding.rank == 0:
            for (number, chunk), rank_vectors in zip(round_, gathered):
                yield number, chunk, rank_vectors


def _index_follower(method: "CIRMethod", catalogue: Catalogue, sharding: "Sharding", batch_size: int,
                    device: torch.device | str, num_workers: int, precision: str) -> IndexReport:
    """A rank other than 0: encode this rank's share of rank 0's plan, return rank 0's report."""
    entries = {e.image_id: e for e in catalogue.entries}
    plan = _receive(sharding, "plan")
    work = [(number, [entries[i] for i in ids]) for number, ids in plan]
    method.eval()
    for _ in _encode_work(method, catalogue, work, batch_size, device, num_workers, precision, sharding):
        pass
    return _receive(sharding, "report")


def _index_locked(method, catalogue, out, backend, backend_options, shard_size, batch_size, device,
                  num_workers, on_shard, model, precision="fp32", sharding=None) -> IndexReport:
    fingerprint = model_fingerprint(method)
    # shards of a killed job are reused only when encoded by the same model at the same precision
    job_key = fingerprint if precision == "fp32" else f"{fingerprint}+{precision}"
    store = IndexStore.open(out, writable=True, take_lock=False) if (out / MANIFEST).is_file() else None
    try:
        if store is not None:
            store.check_fingerprint(fingerprint, f"the {method.name!r} model")
            if backend is not None and backend != store.manifest["backend"]["name"]:
                log.warning("%s keeps its %r backend; --backend %s applies to new indexes only",
                            out, store.manifest["backend"]["name"], backend)
        build = out / BUILD
        shards = finished_shards(build, job_key)
        build.mkdir(parents=True, exist_ok=True)
        atomic_write_json(build / JOB_FILE, {"fingerprint": job_key})
        in_shards = {i for s in shards for i in s.ids}
        indexed = {e.image_id for e in catalogue.entries if store is not None and e.image_id in store}
        pending = [e for e in catalogue.entries if e.image_id not in indexed and e.image_id not in in_shards]
        reused = len(shards)
        if shards:
            log.info("resuming: %d finished shards (%d images) found in %s", reused, len(in_shards), build)
        number = max((s.number for s in shards), default=-1) + 1
        method.eval()
        total = len(catalogue.entries) - len(indexed)
        work = [(number + i, pending[start : start + shard_size]) for i, start in enumerate(range(0, len(pending), shard_size))]
        if sharding is not None:
            _send(sharding, ("plan", [(n, [e.image_id for e in chunk]) for n, chunk in work]))
        with tqdm(total=total, initial=total - len(pending), desc=f"index {out.name}", unit="img", disable=None) as bar:
            for number, chunk, vectors in _encode_work(method, catalogue, work, batch_size, device, num_workers,
                                                       precision, sharding):
                vectors_file, ids_file = _shard_paths(build, number)
                atomic_save_npy(vectors_file, vectors)
                atomic_write_json(ids_file, {"ids": [e.image_id for e in chunk]})
                shards.append(Shard(number, [e.image_id for e in chunk], vectors_file))
                bar.update(len(chunk))
                if on_shard is not None:
                    on_shard(number)
        store, added = _commit_shards(store, shards, catalogue, out, fingerprint, model, backend, backend_options)
        shutil.rmtree(build, ignore_errors=True)
        return IndexReport(out, added, len(indexed), len(shards) - reused, reused, len(store))
    finally:
        if store is not None:
            store.close()


def _commit_shards(store: IndexStore | None, shards: list[Shard], catalogue: Catalogue, out: Path,
                   fingerprint: str, model: Mapping[str, Any], backend: str | None,
                   backend_options: Mapping[str, Any] | None) -> tuple[IndexStore, int]:
    """Move the shards' vectors into the index (one new generation); returns (store, added)."""
    entries = {e.image_id: e for e in catalogue.entries}
    ids: list[str] = []
    parts: list[np.ndarray] = []
    added = 0

    def flush() -> None:
        nonlocal store, added
        if not ids:
            return
        vectors = np.concatenate(parts)
        if store is None:
            store = IndexStore.create(out, vectors.shape[1], backend or "exact", backend_options,
                                      fingerprint, model, take_lock=False)
        chosen = [entries[i] for i in ids]
        store.add(ids, vectors, [str(e.path) for e in chosen], [_metadata(e) for e in chosen])
        added += len(ids)
        ids.clear()
        parts.clear()

    given = store
    try:
        for shard in sorted(shards, key=lambda s: s.number):
            vectors = shard.load()
            # keep only images still in the catalogue and not yet indexed (a crash may have
            # happened after a previous commit but before build/ was removed)
            keep = [row for row, i in enumerate(shard.ids) if i in entries and (store is None or i not in store)]
            ids.extend(shard.ids[row] for row in keep)
            parts.append(vectors[keep])
            if len(ids) >= SEGMENT_ROWS:
                flush()
        flush()
        if store is None:
            raise ValueError("the catalogue has no images to index")
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


def delete_images(index_dir: str | Path, ids: Sequence[str]) -> int:
    """Remove ``ids`` from an index (one new generation); returns the new image count."""
    with IndexStore.open(index_dir, writable=True) as store:
        store.delete(list(dict.fromkeys(ids)))
        store.commit()
        return len(store)
