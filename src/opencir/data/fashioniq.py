"""FashionIQ (Wu et al., CVPR 2021): dress / shirt / toptee x train / val / test.

Layout (the fashion-iq repository's folders; ``json/`` as in Pic2Word's README and
``resized_image/<category>/`` as in TG-CIR are accepted too)::

    root/
      captions/cap.{dress,shirt,toptee}.{train,val,test}.json    (or json/...)
      image_splits/split.{dress,shirt,toptee}.{train,val,test}.json
      images/<asin>.png|.jpg                                     (or images/<category>/,
                                                                  resized_image/<category>/)
      correction_dict_<category>.json                            optional (TG-CIR, see below)

Query ids are ``"<category>/<index in the caption file>"``; image ids are ASINs.
``category="all"`` (default) loads the three categories as ``parts``: the evaluator and
``eval-rankings`` report ``dress/R@10`` ... and ``avg/R@10``, the mean over categories.

Two gallery conventions (spec 1.6), chosen by ``gallery=``; their numbers are not
comparable:

* ``"full-val"`` (alias ``"original-split"``): every image of ``split.<cat>.<split>.json``,
  the reference is **not** removed (CLIP4Cir, Pic2Word, Context-I2W).
* ``"val-split"``: the union of candidate and target ids of the split's triplets, the
  reference **is** removed (TG-CIR, OFFSET default).

Caption policies (spec 1.7, ``data/captions.py``): default ``"clip4cir"`` (random 4-way
in training, "C1 and c2" in eval); ``"tgcir"`` for TG-CIR/OFFSET; ``"pic2word"`` for the
zero-shot "{c2} and {c1}" order. TG-CIR/OFFSET also apply per-category spelling
dictionaries: pass ``corrections="auto"`` (looks for ``correction_dict_<cat>.json`` under
``root``) or a folder; captions are then normalised and corrected at load time
[INFERRED: file name as in TG-CIR's code, the dictionaries are not redistributed here].

Every image record carries its OFFSET mask file in ``mask_path`` (official naming,
``masks/layouts.py``); ``opencir masks`` writes those files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..evaluation.protocols import RecallProtocol
from ..registry import Registry
from .captions import normalise_text
from .check import (
    SPLITS,
    AnnotationError,
    expect_type,
    find_dir,
    find_file,
    get_field,
    index_image_folder,
    read_json,
    require_folder,
    resolve_split,
    select_names,
)
from .registry import DATASETS
from .types import CIRDataset, ImageRecord, Triplet

CATEGORIES = ("dress", "shirt", "toptee")
FIQ_SPLITS = ("train", "val", "test")
SPLITS.register("fashioniq")(FIQ_SPLITS)


@dataclass(frozen=True)
class GalleryConvention:
    """How the gallery of one category split is built and whether the reference is removed."""

    build: Callable[[Sequence[Triplet], Sequence[str]], list[str]]
    exclude_reference: bool
    used_by: str


GALLERIES: Registry[GalleryConvention] = Registry("FashionIQ gallery convention")


def _full_split(triplets: Sequence[Triplet], split_ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(split_ids))


def _triplet_union(triplets: Sequence[Triplet], split_ids: Sequence[str]) -> list[str]:
    if not any(t.target_ids for t in triplets):
        raise ValueError("the val-split gallery needs targets; this split hides them (use gallery='full-val')")
    return list(dict.fromkeys(i for t in triplets for i in (t.reference_id, *t.target_ids)))


GALLERIES.register("full-val")(GalleryConvention(_full_split, False, "CLIP4Cir, Pic2Word, Context-I2W"))
GALLERIES.register("original-split")(GALLERIES.get("full-val"))
GALLERIES.register("val-split")(GalleryConvention(_triplet_union, True, "TG-CIR, OFFSET"))


def fashioniq_protocol(exclude_reference: bool) -> RecallProtocol:
    """R@1/10/50 and Avg = (R@10 + R@50) / 2 per category."""
    return RecallProtocol(ks=(1, 10, 50), exclude_reference=exclude_reference, averages={"Avg": ["R@10", "R@50"]})


def read_corrections(corrections: str | None, auto_folders: Sequence[Path], name: str, what: str) -> dict[str, str] | None:
    """TG-CIR's spelling dictionary ``correction_dict_<name>.json`` (word -> fix), looked up
    in ``auto_folders`` when ``corrections="auto"``, else in the folder ``corrections``;
    None when ``corrections`` is None. Shared with the Shoes reader."""
    if corrections is None:
        return None
    folders = list(auto_folders) if corrections == "auto" else [Path(corrections).expanduser()]
    path = find_file([f / f"correction_dict_{name}.json" for f in folders], what)
    return {str(k): str(v) for k, v in expect_type(read_json(path), dict, path, "the correction dictionary").items()}


def _load_corrections(root: Path, corrections: str | None, category: str) -> dict[str, str] | None:
    return read_corrections(corrections, [root, root / "captions", root / "json"], category,
                            f"FashionIQ {category} spelling dictionary")


def _read_triplets(path: Path, category: str, hidden: bool, fix: dict[str, str] | None) -> list[Triplet]:
    records = expect_type(read_json(path), list, path, "the caption file")
    triplets = []
    for index, record in enumerate(records):
        where = f"record {index}"
        candidate = get_field(record, "candidate", path, where, str)
        captions = get_field(record, "captions", path, where, list)
        if not captions or not all(isinstance(c, str) for c in captions):
            raise AnnotationError(f"{path}: {where} field 'captions' must be a non-empty list of strings")
        if fix is not None:
            captions = [normalise_text(c, fix) for c in captions]
        targets = () if hidden else (get_field(record, "target", path, where, str),)
        triplets.append(Triplet(f"{category}/{index}", candidate, tuple(captions), targets, (), {"category": category}))
    return triplets


def _image_folder(root: Path, category: str, required: bool) -> Path:
    candidates = [root / "images" / category, root / "resized_image" / category, root / "images", root / "resized_image"]
    return require_folder(find_dir(candidates), candidates, "FashionIQ image folder", required, root / "images")


def _record(image_id: str, path: Path, root: Path, category: str) -> ImageRecord:
    """An image with its official OFFSET mask file (``<category>_segmask/<id>-seg.png``)."""
    from ..masks.layouts import official_mask_path  # here, not at the top: opencir.masks imports torch

    return ImageRecord(image_id, path, mask_path=official_mask_path("fashioniq", path, image_id, root, category))


def _load_category(
    root: Path,
    split: str,
    category: str,
    gallery: GalleryConvention,
    caption_policy: str,
    require_images: bool,
    corrections: str | None,
    folder_index: dict[Path, dict[str, Path]],
) -> CIRDataset:
    cap_dirs = [root / "captions", root / "json"]
    cap_path = find_file([d / f"cap.{category}.{split}.json" for d in cap_dirs], f"FashionIQ {category} {split} captions")
    split_path = find_file([root / "image_splits" / f"split.{category}.{split}.json"], f"FashionIQ {category} {split} image split")
    triplets = _read_triplets(cap_path, category, split == "test", _load_corrections(root, corrections, category))
    split_ids = [str(i) for i in expect_type(read_json(split_path), list, split_path, "the image split")]
    folder = _image_folder(root, category, require_images)
    if folder not in folder_index:
        folder_index[folder] = index_image_folder(folder)
    found = folder_index[folder]
    ids = list(dict.fromkeys([*split_ids, *(i for t in triplets for i in (t.reference_id, *t.target_ids))]))
    images = {i: _record(i, found.get(i, folder / f"{i}.png"), root, category) for i in ids}
    return CIRDataset(
        name="fashioniq",
        split=split,
        root=root,
        triplets=triplets,
        images=images,
        gallery_ids=gallery.build(triplets, split_ids),
        protocol=fashioniq_protocol(gallery.exclude_reference),
        caption_policy=caption_policy,
        info={"category": category, "captions_file": str(cap_path), "split_file": str(split_path), "image_folder": str(folder)},
    )


@DATASETS.register("fashioniq")
def load_fashioniq(
    root: Path,
    split: str,
    category: str | Sequence[str] = "all",
    gallery: str = "full-val",
    caption_policy: str = "clip4cir",
    require_images: bool = True,
    corrections: str | None = None,
) -> CIRDataset:
    """FashionIQ ``split`` of ``category`` ("all", one name, or a comma list) with the
    ``gallery`` convention ("full-val" or "val-split")."""
    split = resolve_split(split, FIQ_SPLITS, {"dev": "val"}, "fashioniq")
    convention = GALLERIES.get(gallery)
    folder_index: dict[Path, dict[str, Path]] = {}
    parts = {
        c: _load_category(root, split, c, convention, caption_policy, require_images, corrections, folder_index)
        for c in select_names(category, CATEGORIES, "category", "fashioniq")
    }
    if len(parts) == 1:
        only = next(iter(parts.values()))
        only.info["gallery"] = gallery  # the convention is part of what a result was measured under
        return only
    images: dict[str, ImageRecord] = {}
    for part in parts.values():
        images.update(part.images)
    return CIRDataset(
        name="fashioniq",
        split=split,
        root=root,
        triplets=[t for part in parts.values() for t in part.triplets],
        images=images,
        gallery_ids=list(dict.fromkeys(i for part in parts.values() for i in part.gallery_ids)),
        protocol=fashioniq_protocol(convention.exclude_reference),
        caption_policy=caption_policy,
        parts=parts,
        info={"categories": list(parts), "gallery": gallery},
    )
