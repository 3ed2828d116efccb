"""CIRCO (Baldrati et al., ICCV 2023): val (220 queries) and test (800, hidden).

Layout (as the CIRCO repository documents it)::

    root/
      annotations/{val,test}.json
      COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
      COCO2017_unlabeled/unlabeled2017/000000243611.jpg ...

The gallery is every image of ``image_info_unlabeled2017.json`` (123,403 [MEM]) in file
order; without that file the ``unlabeled2017/`` folder listing is used. Image ids are the
COCO ids as strings (``"243611"``), query ids the annotation ``id`` as a string.
``target_ids`` are ``gt_img_ids`` (the first one is ``target_img_id``).

Protocol: mAP@5/10/25/50 over all ground truths, plus Recall@5/10/25/50 of
``target_img_id`` as CIRCO's own evaluation script prints them. The reference is **not**
removed from rankings: neither CIRCO's server script nor its authors' validation code
(SEARLE) removes it [CODE; the spec does not say]. Pass ``exclude_reference=True`` to
change that. Test: write the server file with ``opencir submission circo``.
"""
from __future__ import annotations

from pathlib import Path

from ..evaluation.protocols import MAPProtocol
from .check import (
    SPLITS,
    AnnotationError,
    expect_type,
    find_file,
    get_field,
    index_image_folder,
    read_json,
    require_folder,
    resolve_split,
)
from .registry import DATASETS
from .types import CIRDataset, ImageRecord, Triplet

CIRCO_SPLITS = ("val", "test")
SPLITS.register("circo")(CIRCO_SPLITS)
IMAGE_INFO = Path("COCO2017_unlabeled") / "annotations" / "image_info_unlabeled2017.json"
IMAGE_DIR = Path("COCO2017_unlabeled") / "unlabeled2017"


def circo_protocol(exclude_reference: bool = False) -> MAPProtocol:
    """mAP@5/10/25/50 (all ground truths) and R@5/10/25/50 of the first ground truth."""
    return MAPProtocol(ks=(5, 10, 25, 50), exclude_reference=exclude_reference, recall_ks=(5, 10, 25, 50))


def coco_file_name(image_id: int | str) -> str:
    """COCO's file naming: 12-digit zero-padded id + ``.jpg``."""
    return f"{int(image_id):012d}.jpg"


def _gallery(root: Path, required: bool) -> tuple[dict[str, Path], bool]:
    """Gallery id -> path, and whether the gallery is complete (known)."""
    info_path = root / IMAGE_INFO
    folder = root / IMAGE_DIR
    if info_path.is_file():
        data = expect_type(read_json(info_path), dict, info_path, "the image info file")
        out = {}
        for index, record in enumerate(get_field(data, "images", info_path, "the file", list)):
            where = f"images[{index}]"
            image_id = get_field(record, "id", info_path, where, int)
            name = get_field(record, "file_name", info_path, f"{where} (id {image_id})", str)
            out[str(image_id)] = folder / name
        return out, True
    if folder.is_dir():
        listed = index_image_folder(folder)
        return {str(int(stem)): path for stem, path in listed.items() if stem.isdigit()}, True
    require_folder(None, [info_path, folder], "CIRCO gallery (image info file or unlabeled2017 folder)", required)
    return {}, False


@DATASETS.register("circo")
def load_circo(
    root: Path,
    split: str,
    require_images: bool = True,
    caption_policy: str = "first",
    exclude_reference: bool = False,
) -> CIRDataset:
    """CIRCO ``split`` ("val" or "test") from ``root``."""
    split = resolve_split(split, CIRCO_SPLITS, {}, "circo")
    path = find_file([root / "annotations" / f"{split}.json", root / f"{split}.json"], f"CIRCO {split} annotations")
    records = expect_type(read_json(path), list, path, "the annotation file")
    hidden = split == "test"
    triplets = []
    for index, record in enumerate(records):
        qid = get_field(record, "id", path, f"record {index}", int)
        where = f"record {index} (id {qid})"
        reference = str(get_field(record, "reference_img_id", path, where, int))
        caption = get_field(record, "relative_caption", path, where, str)
        extra = {"shared_concept": record.get("shared_concept"), "semantic_aspects": tuple(record.get("semantic_aspects", ()))}
        targets: tuple[str, ...] = ()
        if not hidden:
            gts = get_field(record, "gt_img_ids", path, where, list)
            target = get_field(record, "target_img_id", path, where, int)
            if not gts or gts[0] != target:
                raise AnnotationError(f"{path}: {where}: gt_img_ids must start with target_img_id {target}")
            targets = tuple(str(int(g)) for g in gts)
        triplets.append(Triplet(str(qid), reference, (caption,), targets, (), extra))
    gallery, known = _gallery(root, require_images)
    folder = root / IMAGE_DIR
    images = {i: ImageRecord(i, p) for i, p in gallery.items()}
    for t in triplets:
        for image_id in (t.reference_id, *t.target_ids):
            if image_id not in images:
                if known:
                    raise AnnotationError(f"{path}: query {t.query_id} refers to image {image_id}, absent from the gallery")
                images[image_id] = ImageRecord(image_id, folder / coco_file_name(image_id))
    return CIRDataset(
        name="circo",
        split=split,
        root=root,
        triplets=triplets,
        images=images,
        gallery_ids=list(gallery),
        protocol=circo_protocol(exclude_reference),
        caption_policy=caption_policy,
        info={"annotations_file": str(path), "gallery_known": known},
    )
