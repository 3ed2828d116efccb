"""Where a dataset's dominant-portion masks live: the official OFFSET file naming.

A dataset reader may state each image's mask file in ``ImageRecord.mask_path``; when it
does not, the naming registered here for the dataset is used (spec 5.2, official
``datasets.py``):

* ``fashioniq``: ``<dir>/<category>/<id>.jpg`` -> ``<dir>/<category>_segmask/<id>-seg.png``
  (a flat ``<root>/images/<id>.png`` layout gets ``<root>/<category>_segmask/<id>-seg.png``)
* ``shoes``: ``.../<name>.jpg`` -> ``.../<name>-segmask.jpg`` (same folder)
* ``cirr``: ``.../<name>.png`` -> ``.../<name>-segmask.png`` (same folder)
* ``cir-shapes``: ``<root>/masks/<id>.png`` (exact ground truth written by the generator)

This module imports nothing heavy, so dataset readers may call ``official_mask_path``.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..data.types import CIRDataset, ImageRecord
from ..registry import Registry

MaskLayout = Callable[[Path, str, Path, "str | None"], Path]
"""(image path, image id, dataset root, group such as the FashionIQ category) -> mask path."""
MASK_LAYOUTS: Registry[MaskLayout] = Registry("mask layout")
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


@MASK_LAYOUTS.register("fashioniq")
def _fashioniq(image: Path, image_id: str, root: Path, category: str | None) -> Path:
    if image.parent.name in FASHIONIQ_CATEGORIES:
        return image.parent.with_name(f"{image.parent.name}_segmask") / f"{image.stem}-seg.png"
    if category is None:
        raise ValueError(f"FashionIQ image {image_id!r} ({image}) is not in a category folder and has no category")
    return image.parent.parent / f"{category}_segmask" / f"{image.stem}-seg.png"


@MASK_LAYOUTS.register("shoes")
def _shoes(image: Path, image_id: str, root: Path, group: str | None) -> Path:
    return image.with_name(f"{image.stem}-segmask.jpg")


@MASK_LAYOUTS.register("cirr")
def _cirr(image: Path, image_id: str, root: Path, group: str | None) -> Path:
    return image.with_name(f"{image.stem}-segmask.png")


@MASK_LAYOUTS.register("cir-shapes")
def _cir_shapes(image: Path, image_id: str, root: Path, group: str | None) -> Path:
    return root / "masks" / f"{image_id}.png"


def official_mask_path(
    dataset: str, image_path: str | Path, image_id: str, root: str | Path, category: str | None = None
) -> Path:
    """The official mask file of one image of ``dataset`` (``category``: FashionIQ's)."""
    return MASK_LAYOUTS.get(dataset)(Path(image_path), image_id, Path(root), category)


def _group_of(dataset: CIRDataset, image_id: str) -> str | None:
    """The category of an image: the split's own, else the first part holding it."""
    if dataset.info.get("category"):
        return str(dataset.info["category"])
    return next((name for name, part in dataset.parts.items() if image_id in part.images), None)


def mask_path_for(dataset: CIRDataset, record: ImageRecord) -> Path:
    """``record.mask_path``, or the dataset's registered official naming."""
    if record.mask_path is not None:
        return Path(record.mask_path)
    if dataset.name not in MASK_LAYOUTS:
        raise ValueError(
            f"{dataset.name}: image {record.image_id!r} has no mask_path and no mask layout is registered "
            f"for this dataset (known layouts: {', '.join(MASK_LAYOUTS.names())})"
        )
    return official_mask_path(dataset.name, record.path, record.image_id, dataset.root,
                              _group_of(dataset, record.image_id))


def require_mask_file(dataset: CIRDataset, record: ImageRecord) -> Path:
    """The existing mask file of ``record``; FileNotFoundError says how to make it."""
    path = mask_path_for(dataset, record)
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset.name}: the mask of image {record.image_id!r} is missing ({path}); run "
            f"`opencir masks --dataset {dataset.name} --root {dataset.root}` first"
        )
    return path


def with_mask_paths(dataset: CIRDataset) -> CIRDataset:
    """``dataset`` with every record's ``mask_path`` filled in (parts included)."""
    parts = {name: with_mask_paths(part) for name, part in dataset.parts.items()}
    images = {i: r if r.mask_path is not None else replace(r, mask_path=mask_path_for(dataset, r))
              for i, r in dataset.images.items()}
    return replace(dataset, images=images, parts=parts)
