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

Three gallery conventions (spec 1.6), chosen by ``gallery=``; their numbers are not
comparable, so every metrics dict names its convention (``"gallery_convention"``):

* ``"full-val"``: every image of ``split.<cat>.<split>.json``, the reference is **not**
  removed (CLIP4Cir, Pic2Word, Context-I2W; val galleries 3,817 / 6,346 / 5,373 images
  for dress / shirt / toptee);
* ``"full-val-no-reference"`` (alias ``"original-split"``, OFFSET's name): the same
  gallery with each query's reference **removed** (OFFSET ``--fashioniq_split
  original-split``: ``test.py`` sets the reference's score to -1e11 on every dataset);
* ``"val-split"``: the union of candidate and target ids of the split's triplets, the
  reference **is** removed (TG-CIR, OFFSET default; 2,628 / 3,089 / 2,902 images).

Caption policies (spec 1.7, ``data/captions.py``): default ``"clip4cir"`` (random 4-way
in training, "C1 and c2" in eval); ``"pic2word"`` for the zero-shot "{c2} and {c1}"
order of the raw captions. Triplets keep the raw captions. TG-CIR/OFFSET clean them and
apply per-category spelling dictionaries at query time: ``corrections="auto"`` (default)
loads ``correction_dict_<cat>.json`` from ``root/captions`` (where the official code reads
it), ``root`` or ``root/json`` when present; a folder requires them there; ``"none"``
loads none. The dictionaries come from the official TG-CIR/OFFSET repositories and are
not redistributed here; those methods refuse to run without them.

Every image record carries its OFFSET mask file in ``mask_path`` (official naming,
``masks/layouts.py``); ``opencir masks`` writes those files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..evaluation.protocols import RecallProtocol
from ..registry import Registry
from .captions import SPELLING_DICTIONARIES_KEY, SPELLING_NAME_KEY
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

    name: str
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


for _convention in (
    GalleryConvention("full-val", _full_split, False, "CLIP4Cir, Pic2Word, Context-I2W"),
    GalleryConvention("full-val-no-reference", _full_split, True, "OFFSET --fashioniq_split original-split"),
    GalleryConvention("val-split", _triplet_union, True, "TG-CIR, OFFSET default"),
):
    GALLERIES.register(_convention.name)(_convention)
GALLERIES.register("original-split")(GALLERIES.get("full-val-no-reference"))  # OFFSET's own name


def fashioniq_protocol(convention: GalleryConvention) -> RecallProtocol:
    """R@1/10/50 and Avg = (R@10 + R@50) / 2 per category, naming the gallery convention."""
    return RecallProtocol(ks=(1, 10, 50), exclude_reference=convention.exclude_reference,
                          averages={"Avg": ["R@10", "R@50"]}, gallery_convention=convention.name)


def read_corrections(corrections: str | None, auto_folders: Sequence[Path], name: str, what: str) -> dict[str, str] | None:
    """TG-CIR/OFFSET's spelling dictionary ``correction_dict_<name>.json`` (word -> fix).

    ``"auto"``: the first one found in ``auto_folders``, None when there is none;
    a folder: required there (a LayoutError otherwise); None or ``"none"``: None.
    Shared with the Shoes reader."""
    if corrections is None or corrections == "none":
        return None
    file_name = f"correction_dict_{name}.json"
    if corrections == "auto":
        path = next((f / file_name for f in auto_folders if (f / file_name).is_file()), None)
        if path is None:
            return None
    else:
        path = find_file([Path(corrections).expanduser() / file_name], what)
    table = expect_type(read_json(path), dict, path, "the correction dictionary")
    bad = next((k for k, v in table.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise AnnotationError(f"{path}: the correction of {bad!r} must be a string, got {table[bad]!r}")
    return {str(k): v for k, v in table.items()}


def _load_corrections(root: Path, corrections: str | None, category: str) -> dict[str, str] | None:
    return read_corrections(corrections, [root / "captions", root, root / "json"], category,
                            f"FashionIQ {category} spelling dictionary")


def _read_triplets(path: Path, category: str, hidden: bool) -> list[Triplet]:
    records = expect_type(read_json(path), list, path, "the caption file")
    triplets = []
    for index, record in enumerate(records):
        where = f"record {index}"
        candidate = get_field(record, "candidate", path, where, str)
        captions = get_field(record, "captions", path, where, list)
        if not captions or not all(isinstance(c, str) for c in captions):
            raise AnnotationError(f"{path}: {where} field 'captions' must be a non-empty list of strings")
        targets = () if hidden else (get_field(record, "target", path, where, str),)
        extra = {"category": category, SPELLING_NAME_KEY: category}  # the dictionary is per category
        triplets.append(Triplet(f"{category}/{index}", candidate, tuple(captions), targets, (), extra))
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
    triplets = _read_triplets(cap_path, category, split == "test")
    fix = _load_corrections(root, corrections, category)
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
        protocol=fashioniq_protocol(gallery),
        caption_policy=caption_policy,
        info={"category": category, "captions_file": str(cap_path), "split_file": str(split_path), "image_folder": str(folder),
              "gallery": gallery.name, SPELLING_DICTIONARIES_KEY: {category: fix} if fix is not None else {}},
    )


@DATASETS.register("fashioniq")
def load_fashioniq(
    root: Path,
    split: str,
    category: str | Sequence[str] = "all",
    gallery: str = "full-val",
    caption_policy: str = "clip4cir",
    require_images: bool = True,
    corrections: str | None = "auto",
) -> CIRDataset:
    """FashionIQ ``split`` of ``category`` ("all", one name, or a comma list) with the
    ``gallery`` convention ("full-val", "full-val-no-reference" = "original-split", or
    "val-split")."""
    split = resolve_split(split, FIQ_SPLITS, {"dev": "val"}, "fashioniq")
    convention = GALLERIES.get(gallery)
    folder_index: dict[Path, dict[str, Path]] = {}
    parts = {
        c: _load_category(root, split, c, convention, caption_policy, require_images, corrections, folder_index)
        for c in select_names(category, CATEGORIES, "category", "fashioniq")
    }
    if len(parts) == 1:
        return next(iter(parts.values()))
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
        protocol=fashioniq_protocol(convention),
        caption_policy=caption_policy,
        parts=parts,
        info={"categories": list(parts), "gallery": convention.name,
              SPELLING_DICTIONARIES_KEY: {k: v for p in parts.values() for k, v in p.info[SPELLING_DICTIONARIES_KEY].items()}},
    )
