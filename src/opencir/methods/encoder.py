"""The encoder API behind ``CIRMethod.encode_queries`` / ``encode_gallery``: vectors out.

For people who put vectors into their own engine (Qdrant, Milvus, FAISS...): inputs are
image paths (also ``<shard.tar>::<member>``), ``PIL.Image`` objects, or ids of a catalogue
(an image folder or ``manifest.csv``, ``retrieval.catalogue``); outputs are float32,
L2-normalised, one row per input in input order, computed exactly as ``opencir index``
computes gallery vectors (the method's own preprocessing, ``encode_images`` then
``embed_targets``) and as ``Retriever`` computes queries (``encode_images`` + ``encode_texts``
then ``compose``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import load_image

if TYPE_CHECKING:
    from ..retrieval.catalogue import Catalogue
    from .base import CIRMethod, Features

ImageInput = Union[str, Path, Image.Image]
"""A path (str or Path) or a PIL image; a str that is an id of the given catalogue means that image."""


def _resolve(items: Sequence[ImageInput], masks: Sequence[ImageInput | None] | None,
             catalogue: "Catalogue | None", what: str) -> tuple[list[ImageInput], list[ImageInput | None]]:
    """Images and masks as paths or PIL images (catalogue ids replaced by their files)."""
    if isinstance(items, (str, Path, Image.Image)):
        raise ValueError(f"{what}: give a list of images, not a single {type(items).__name__}")
    items = list(items)
    if masks is not None:
        masks = list(masks)
        if len(masks) != len(items):
            raise ValueError(f"{what}: {len(masks)} masks for {len(items)} images")
    entries = {e.image_id: e for e in catalogue.entries} if catalogue is not None else {}
    images: list[ImageInput] = []
    mask_list: list[ImageInput | None] = []
    for i, item in enumerate(items):
        mask = masks[i] if masks is not None else None
        entry = entries.get(item) if isinstance(item, str) else None
        if entry is not None:
            images.append(entry.path)
            mask_list.append(mask if mask is not None else entry.mask_path)
        elif isinstance(item, (str, Path, Image.Image)):
            images.append(item)
            mask_list.append(mask)
        else:
            raise ValueError(f"{what}[{i}]: expected an image path or a PIL image, got {type(item).__name__}")
    return images, mask_list


def _open(item: ImageInput) -> Image.Image:
    return item.convert("RGB") if isinstance(item, Image.Image) else load_image(item)


def _batches(method: "CIRMethod", images: list[ImageInput], masks: list[ImageInput | None], batch_size: int,
             device: torch.device, progress: bool | None, desc: str):
    """(start, pixels, masks) per batch, preprocessed with the method's own transform."""
    transform = method.preprocess
    needs_masks = method.requirements.needs_masks
    with tqdm(total=len(images), desc=desc, unit="img", disable=None if progress is None else not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pixels = torch.stack([transform(_open(item)) for item in chunk]).to(device)
            mask_pixels = None
            if needs_masks:
                chunk_masks = masks[start:start + batch_size]
                missing = next((start + j for j, m in enumerate(chunk_masks) if m is None), None)
                if missing is not None:
                    raise ValueError(f"method {method.name!r} needs a segmentation mask per image; image {missing} "
                                     f"has none (pass masks=[...] or a catalogue with a mask_path column)")
                mask_pixels = torch.stack([transform(_open(m)) for m in chunk_masks]).to(device)
            yield start, pixels, mask_pixels
            bar.update(len(chunk))


def _run(method: "CIRMethod", device: torch.device | str | None, batch_size: int, convert_to_numpy: bool,
         body: Callable[[torch.device], list[torch.Tensor]]) -> np.ndarray | torch.Tensor:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if device is not None:
        method.to(device)
    target = next(method.parameters()).device
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            parts = body(target)
    finally:
        method.train(was_training)
    out = torch.cat(parts) if parts else torch.zeros((0, method.backbone.embed_dim))
    out = out.float().cpu().contiguous()
    return out.numpy() if convert_to_numpy else out


def encode_gallery(method: "CIRMethod", images: Sequence[ImageInput], *, masks: Sequence[ImageInput | None] | None = None,
                   catalogue: "Catalogue | None" = None, batch_size: int = 32, device: torch.device | str | None = None,
                   progress: bool | None = False, convert_to_numpy: bool = True) -> np.ndarray | torch.Tensor:
    """(N, D) gallery vectors of ``images``: what ``opencir index`` stores for them."""
    resolved, mask_list = _resolve(images, masks, catalogue, "encode_gallery")

    def body(dev: torch.device) -> list[torch.Tensor]:
        return [method.embed_targets(method.encode_images(pixels, mask_pixels)).float().cpu()
                for _, pixels, mask_pixels in _batches(method, resolved, mask_list, batch_size, dev, progress,
                                                       "encode gallery")]

    return _run(method, device, batch_size, convert_to_numpy, body)


def encode_queries(method: "CIRMethod", images: Sequence[ImageInput], texts: Sequence[str], *,
                   masks: Sequence[ImageInput | None] | None = None, catalogue: "Catalogue | None" = None,
                   batch_size: int = 32, device: torch.device | str | None = None, progress: bool | None = False,
                   convert_to_numpy: bool = True) -> np.ndarray | torch.Tensor:
    """(N, D) composed query vectors of (reference image i, modification text i)."""
    if isinstance(texts, str):
        raise ValueError("encode_queries: give a list of texts, not a single string")
    texts = list(texts)
    resolved, mask_list = _resolve(images, masks, catalogue, "encode_queries")
    if len(texts) != len(resolved):
        raise ValueError(f"encode_queries: {len(resolved)} reference images but {len(texts)} texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"encode_queries: text {i} must be a non-empty string, got {text!r}")
    texts = [t.strip() for t in texts]

    def body(dev: torch.device) -> list[torch.Tensor]:
        parts = []
        for start, pixels, mask_pixels in _batches(method, resolved, mask_list, batch_size, dev, progress,
                                                   "encode queries"):
            reference: Features = method.encode_images(pixels, mask_pixels)
            text = method.encode_texts(texts[start:start + pixels.shape[0]])
            parts.append(method.compose(reference, text).float().cpu())
        return parts

    return _run(method, device, batch_size, convert_to_numpy, body)


def describe_preprocess(method: "CIRMethod") -> dict[str, Any]:
    """Name, size and normalisation of the method's preprocessing (for exports and cards)."""
    b = method.backbone
    return {"transform": method.image_preprocessing()[0], "image_size": b.image_size,
            "mean": list(b.image_mean), "std": list(b.image_std)}
