"""Encoding images into method features, batched, with an on-disk cache for frozen encoders.

``FeatureTable`` holds the features of a set of image ids as stacked tensors. When a
method's image encoder is frozen, ``encode_image_table`` stores the table on disk keyed
by the model fingerprint, the method's feature config and the preprocessing, so every
image is encoded once across epochs, stages and runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from ..data.images import ImageLoadError, load_image
from ..data.transforms import ImageTransform
from ..data.types import CIRDataset
from ..masks.layouts import require_mask_file
from ..methods.base import CIRMethod, Features
from .precision import autocast

log = logging.getLogger(__name__)


class Sharding(Protocol):
    """Which share of the work this process does (``opencir.training.distributed.DistributedContext``)."""

    rank: int
    world_size: int

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order."""
        ...


@dataclass
class FeatureTable:
    """Features of ``ids`` (row i belongs to ids[i]) as named stacked tensors on the CPU."""

    ids: list[str]
    tensors: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        self.index = {image_id: row for row, image_id in enumerate(self.ids)}

    def rows(self, ids: Sequence[str]) -> torch.Tensor:
        try:
            return torch.tensor([self.index[i] for i in ids], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"image id {err.args[0]!r} has no encoded features") from None

    def gather(self, ids: Sequence[str], device: torch.device | str = "cpu") -> Features:
        """Features of ``ids`` in that order, moved to ``device``."""
        rows = self.rows(ids)
        return {name: t.index_select(0, rows).to(device) for name, t in self.tensors.items()}


class ImageFolderDataset(Dataset):
    """Loads and preprocesses the images of ``ids`` (and their masks when asked). With
    ``skip_errors`` an unreadable image gives ``{"error": (i, reason, message)}`` instead
    of raising (see ``collate_skipping``)."""

    def __init__(self, dataset: CIRDataset, ids: Sequence[str], transform: ImageTransform, with_masks: bool,
                 skip_errors: bool = False) -> None:
        self.dataset, self.ids, self.transform, self.with_masks = dataset, list(ids), transform, with_masks
        self.skip_errors = skip_errors

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        if not self.skip_errors:
            return load_pixels(self.dataset, self.ids[i], self.transform, self.with_masks)
        try:
            return {**load_pixels(self.dataset, self.ids[i], self.transform, self.with_masks), "row": i}
        except ImageLoadError as err:
            return {"error": (i, err.reason, str(err))}
        except FileNotFoundError as err:  # e.g. a mask file that is not there
            return {"error": (i, "missing", str(err))}


def collate_skipping(items: list[dict]) -> dict:
    """Batch the readable items; ``"errors"`` lists (row, reason, message) of the others."""
    good = [item for item in items if "error" not in item]
    batch = default_collate(good) if good else {"row": torch.zeros(0, dtype=torch.long)}
    batch["errors"] = [item["error"] for item in items if "error" in item]
    return batch


def load_pixels(dataset: CIRDataset, image_id: str, transform: ImageTransform, with_masks: bool) -> dict[str, torch.Tensor]:
    """``{"pixels": (3, H, W)}`` of one image of ``dataset``, plus ``"masks"`` when asked."""
    record = dataset.images.get(image_id)
    if record is None:
        raise KeyError(f"{dataset.name}/{dataset.split}: image id {image_id!r} is not in this split")
    item = {"pixels": transform(load_image(record.path))}
    if with_masks:
        item["masks"] = transform(load_image(require_mask_file(dataset, record)))
    return item


def method_transform(method: CIRMethod, train: bool = False) -> tuple[str, ImageTransform]:
    """The (name, callable) preprocessing a method asks for, at its backbone's size."""
    return method.image_preprocessing(train)


def feature_cache_key(method: CIRMethod, transform_name: str, precision: str = "fp32") -> str:
    """Identifies features: backbone weights, method + config, preprocessing, masks and
    compute precision (fp32 keys are those of caches written before precision existed)."""
    extra = {} if precision == "fp32" else {"precision": precision}
    payload = json.dumps(
        {
            **extra,
            "backbone": method.backbone.fingerprint(),
            "method": method.name,
            # the training loss never changes image features: switching it keeps the cache
            "config": {k: v for k, v in method.config.to_dict().items() if k not in ("loss", "loss_options")},
            "transform": transform_name,
            "size": method.backbone.image_size,
            "masks": method.requirements.needs_masks,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


@torch.no_grad()
def encode_images(
    method: CIRMethod,
    dataset: CIRDataset,
    ids: Sequence[str],
    transform: ImageTransform,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    on_batch: Callable[[list[str], Features], None] | None = None,
    desc: str = "encode images",
    precision: str = "fp32",
    on_error: Callable[[str, str, str], None] | None = None,
) -> FeatureTable | None:
    """Encode ``ids`` with ``method.encode_images``; returns the table, or streams each
    batch to ``on_batch`` (and returns None) so callers can keep only what they need.
    ``precision`` is a resolved precision (``encoding.precision``); features come back float32.
    ``on_error(id, reason, message)``: unreadable images are reported to it and left out
    (with ``on_batch`` only) instead of stopping the run."""
    ids = list(dict.fromkeys(ids))
    if on_error is not None and on_batch is None:
        raise ValueError("on_error needs on_batch: a table cannot have holes")
    loader = DataLoader(
        ImageFolderDataset(dataset, ids, transform, method.requirements.needs_masks, skip_errors=on_error is not None),
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        collate_fn=collate_skipping if on_error is not None else None,
    )
    chunks: dict[str, list[torch.Tensor]] = {}
    was_training = method.training
    method.eval()
    start = 0
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
            if on_error is not None:
                for row, reason, message in batch["errors"]:
                    on_error(ids[row], reason, message)
                if "pixels" not in batch:
                    continue
                batch_ids = [ids[row] for row in batch["row"].tolist()]
            else:
                batch_ids = ids[start : start + batch["pixels"].shape[0]]
                start += len(batch_ids)
            masks = batch["masks"].to(device) if "masks" in batch else None
            with autocast(precision, device):
                feats = method.encode_images(batch["pixels"].to(device), masks)
            feats = {k: v.detach().float().cpu() for k, v in feats.items()}
            if on_batch is not None:
                on_batch(batch_ids, feats)
            else:
                for name, tensor in feats.items():
                    chunks.setdefault(name, []).append(tensor)
    finally:
        method.train(was_training)
    if on_batch is not None:
        return None
    return FeatureTable(ids, {name: torch.cat(parts) for name, parts in chunks.items()})


def encode_image_table(
    method: CIRMethod,
    dataset: CIRDataset,
    ids: Sequence[str],
    cache_dir: str | Path | None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    precision: str = "fp32",
    sharding: Sharding | None = None,
) -> FeatureTable:
    """Encode ``ids`` once; with a frozen image encoder and a ``cache_dir`` the table is
    read from / written to ``cache_dir/<key>/<ids digest>.safetensors``.

    With a ``sharding`` of several ranks (a collective: every rank calls it), each image
    is encoded by one rank and every rank gets the whole table; rank 0 writes the cache.
    The table is bit-identical to a single-process one (see ``encode_sharded``)."""
    from safetensors.torch import load_file, save_file

    ids = list(dict.fromkeys(ids))
    transform_name, transform = method_transform(method)
    sharded = sharding is not None and sharding.world_size > 1
    cache_file = None
    if cache_dir is not None and method.requirements.image_encoder_frozen:
        key = feature_cache_key(method, transform_name, precision)
        cache_file = Path(cache_dir) / key / f"{_ids_digest(ids)}.safetensors"
        hits = sharding.all_gather_object(cache_file.is_file()) if sharded else [cache_file.is_file()]
        if all(hits):
            log.info("feature cache hit: %s", cache_file)
            return FeatureTable(ids, load_file(str(cache_file)))
    if sharded:
        table = encode_sharded(method, dataset, ids, transform, batch_size, device, num_workers, sharding, precision)
    else:
        table = encode_images(method, dataset, ids, transform, batch_size, device, num_workers, precision=precision)
    assert table is not None
    if cache_file is not None and (not sharded or sharding.rank == 0):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in table.tensors.items()}, str(tmp))
        tmp.replace(cache_file)
    return table


def encode_sharded(
    method: CIRMethod,
    dataset: CIRDataset,
    ids: Sequence[str],
    transform: ImageTransform,
    batch_size: int,
    device: torch.device | str,
    num_workers: int,
    sharding: Sharding,
    precision: str = "fp32",
) -> FeatureTable:
    """Encode ``ids`` over ranks: rank r takes batches r, r + W, r + 2W, ... of the very
    batches one process would make (so every feature comes out of the same computation,
    bit for bit), then the batches are exchanged and put back in order on every rank."""
    ids = list(dict.fromkeys(ids))
    numbers = list(range(sharding.rank, -(-len(ids) // batch_size), sharding.world_size))
    mine = [i for n in numbers for i in ids[n * batch_size:(n + 1) * batch_size]]
    parts: list[Features] = []
    if mine:
        encode_images(method, dataset, mine, transform, batch_size, device, num_workers,
                      on_batch=lambda _ids, feats: parts.append(feats), desc=f"encode images (rank {sharding.rank})",
                      precision=precision)
    batches: dict[int, Features] = {}
    for rank_numbers, rank_parts in sharding.all_gather_object((numbers, parts)):
        batches.update(zip(rank_numbers, rank_parts))
    ordered = [batches[n] for n in sorted(batches)]
    if not ordered:
        return FeatureTable(ids, {})
    return FeatureTable(ids, {name: torch.cat([b[name] for b in ordered]) for name in ordered[0]})


class TextFeatureCache:
    """In-memory cache of ``method.encode_texts`` per string (frozen text encoders only).

    Strings are encoded by ``prefetch`` in first-seen order and fixed-size chunks, so the
    cached values depend only on the sequence of prefetched strings (a resumed run that
    replays the same sequence gets bit-identical features).
    """

    def __init__(self, method: CIRMethod, device: torch.device | str, enabled: bool, chunk_size: int = 256) -> None:
        self.method, self.device, self.enabled, self.chunk_size = method, device, enabled, chunk_size
        self._rows: dict[str, dict[str, torch.Tensor]] = {}

    def prefetch(self, texts: Sequence[str]) -> None:
        """Encode every string of ``texts`` not cached yet (no-op when disabled)."""
        if not self.enabled:
            return
        missing = list(dict.fromkeys(t for t in texts if t not in self._rows))
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start:start + self.chunk_size]
            with torch.no_grad():
                feats = self.method.encode_texts(chunk)
            for i, text in enumerate(chunk):
                self._rows[text] = {k: v[i].detach() for k, v in feats.items()}

    def __call__(self, texts: Sequence[str]) -> Features:
        if not self.enabled:
            return self.method.encode_texts(texts)
        self.prefetch(texts)
        names = self._rows[texts[0]].keys()
        return {k: torch.stack([self._rows[t][k] for t in texts]).to(self.device) for k in names}
