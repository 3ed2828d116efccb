"""Shoes relative captions (Guo et al., NeurIPS 2018), as used by TG-CIR and OFFSET.

Layout (the fashion-retrieval repository's files next to the attribute-discovery image
folders)::

    root/
      relative_captions_shoes.json      [{ReferenceImageName, ImageName, RelativeCaption}]
      train_im_names.txt  eval_im_names.txt
      captions_shoes.json               optional single-image captions
      womens_*/<...>/img_womens_*.jpg   images, found by one recursive listing (any depth;
                                        a flat images/ folder works too)

(The annotation files may also sit in ``root/annotations/``.) ``ImageName`` is the target.
A triplet belongs to the split whose image list holds its reference (spec 1.6; on the
official files both images are always in the same list: 8,990 train, 1,761 eval).
Query ids are the record's index in the caption file; image ids are file names.

Protocol: the gallery is every image of the split's list, the reference is excluded,
R@1/10/50 and their mean ``Avg``. Triplets keep the raw captions. TG-CIR/OFFSET clean
them (lower-case, ASCII punctuation to spaces) and apply ``correction_dict_shoes.json``
at query time (``data/captions.py``); ``corrections="auto"`` (default) loads that file
from ``root`` (where the official code reads it) or ``root/annotations`` when present, a
folder requires it there, ``"none"`` loads none.

Every image record carries its OFFSET mask file in ``mask_path`` (official naming,
``masks/layouts.py``); ``opencir masks`` writes those files.
"""
from __future__ import annotations

from pathlib import Path

from ..evaluation.protocols import RecallProtocol
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
    read_lines,
    require_folder,
    resolve_split,
)
from .fashioniq import read_corrections
from .registry import DATASETS
from .types import CIRDataset, ImageRecord, Triplet

SHOES_SPLITS = ("train", "test")
SPLIT_LISTS = {"train": "train_im_names.txt", "test": "eval_im_names.txt"}
SPLITS.register("shoes")(SHOES_SPLITS)


def shoes_protocol() -> RecallProtocol:
    """R@1/10/50 with the reference excluded, and Avg = their mean."""
    return RecallProtocol(ks=(1, 10, 50), exclude_reference=True, averages={"Avg": ["R@1", "R@10", "R@50"]})


def _annotation_file(root: Path, name: str, what: str) -> Path:
    return find_file([root / name, root / "annotations" / name, root / "relative_captions" / name], what)


def _single_captions(root: Path) -> dict[str, str]:
    try:
        path = _annotation_file(root, "captions_shoes.json", "Shoes image captions")
    except FileNotFoundError:
        return {}
    out = {}
    for index, record in enumerate(expect_type(read_json(path), list, path, "the caption file")):
        name = get_field(record, "ImageName", path, f"record {index}", str)
        out[name] = get_field(record, "Caption", path, f"record {index} ({name})", str)
    return out


def _image_index(root: Path, required: bool) -> dict[str, Path]:
    folders = sorted(p for p in root.glob("womens_*") if p.is_dir())
    if not folders:
        flat = find_dir([root / "images", root / "attributedata"])
        folders = [flat] if flat else []
    if not folders:
        require_folder(None, [root / "womens_*", root / "images"], "Shoes image folders", required)
        return {}
    index: dict[str, Path] = {}
    for folder in folders:
        for name, path in index_image_folder(folder, recursive=True, key="name").items():
            index.setdefault(name, path)
    return index


def _record(name: str, path: Path, caption: str | None, root: Path) -> ImageRecord:
    """An image with its official OFFSET mask file (``<name>-segmask.jpg`` beside it)."""
    from ..masks.layouts import official_mask_path  # here, not at the top: opencir.masks imports torch

    return ImageRecord(name, path, caption, official_mask_path("shoes", path, name, root))


@DATASETS.register("shoes")
def load_shoes(
    root: Path,
    split: str,
    require_images: bool = True,
    caption_policy: str = "first",
    corrections: str | None = "auto",
) -> CIRDataset:
    """Shoes ``split`` ("train" or "test"; "eval"/"val" accepted) from ``root``."""
    split = resolve_split(split, SHOES_SPLITS, {"eval": "test", "val": "test"}, "shoes")
    cap_path = _annotation_file(root, "relative_captions_shoes.json", "Shoes relative captions")
    list_path = _annotation_file(root, SPLIT_LISTS[split], f"Shoes {split} image list")
    names = list(dict.fromkeys(read_lines(list_path)))
    members = set(names)
    fix = read_corrections(corrections, [root, root / "annotations"], "shoes", "Shoes spelling dictionary")
    triplets = []
    for index, record in enumerate(expect_type(read_json(cap_path), list, cap_path, "the caption file")):
        where = f"record {index}"
        reference = get_field(record, "ReferenceImageName", cap_path, where, str)
        if reference not in members:
            continue
        target = get_field(record, "ImageName", cap_path, where, str)
        caption = get_field(record, "RelativeCaption", cap_path, where, str)
        if target not in members:
            raise AnnotationError(
                f"{cap_path}: {where}: reference {reference} is in {list_path.name} but target {target} is not"
            )
        triplets.append(Triplet(str(index), reference, (caption,), (target,)))
    found = _image_index(root, require_images)
    captions = _single_captions(root)
    images = {n: _record(n, found.get(n, root / n), captions.get(n), root) for n in names}
    return CIRDataset(
        name="shoes",
        split=split,
        root=root,
        triplets=triplets,
        images=images,
        gallery_ids=names,
        protocol=shoes_protocol(),
        caption_policy=caption_policy,
        info={"captions_file": str(cap_path), "list_file": str(list_path), SPELLING_NAME_KEY: "shoes",
              SPELLING_DICTIONARIES_KEY: {"shoes": fix} if fix is not None else {}},
    )
