"""CIRR rc2 (Liu et al., ICCV 2021): train / val / test1, read from the official layout.

Layout (as the CIRR repository documents it; ``root`` is the folder holding ``cirr/``
and the image folders, or the annotation folder itself)::

    root/
      cirr/captions/cap.rc2.{train,val,test1}.json     (or root/captions/...)
      cirr/image_splits/split.rc2.{train,val,test1}.json
      train/<0..99>/train-*.png    dev/dev-*.png    test1/test1-*.png

``split.rc2.<split>.json`` maps image names to paths relative to the image root
(val images live under ``./dev/``). Query ids are ``str(pairid)``; image ids are the
names without extension. Training uses ``target_hard``.

Protocol (spec 1.6): the gallery is the split's image list; the reference is removed
from each ranking; R@1/5/10/50; R_subset@1/2/3 ranks only ``img_set.members`` minus the
reference; ``Avg = (R@5 + Rsubset@1) / 2``. Test1 has no targets: use
``opencir submission cirr`` (``data/submission.py``) for the evaluation server.

Every image record carries its OFFSET mask file in ``mask_path`` (official naming,
``masks/layouts.py``); ``opencir masks`` writes those files.
"""
from __future__ import annotations

from pathlib import Path

from ..evaluation.protocols import RecallProtocol
from .check import (
    SPLITS,
    AnnotationError,
    LayoutError,
    expect_type,
    find_dir,
    find_file,
    get_field,
    read_json,
    require_folder,
    resolve_split,
)
from .registry import DATASETS
from .types import CIRDataset, ImageRecord, Triplet

CIRR_SPLITS = ("train", "val", "test1")
SPLIT_ALIASES = {"dev": "val", "test": "test1"}
SPLITS.register("cirr")(CIRR_SPLITS)


def cirr_protocol() -> RecallProtocol:
    """R@1/5/10/50 with the reference removed, R_subset@1/2/3 and Avg = (R@5 + Rsubset@1)/2."""
    return RecallProtocol(
        ks=(1, 5, 10, 50), exclude_reference=True, subset_ks=(1, 2, 3), averages={"Avg": ["R@5", "Rsubset@1"]}
    )


def _annotation_dir(root: Path) -> Path:
    candidates = [root / "cirr", root]
    for folder in candidates:
        if (folder / "captions").is_dir() or (folder / "image_splits").is_dir():
            return folder
    tried = ", ".join(str(c / "captions") for c in candidates)
    raise LayoutError(f"CIRR annotations not found under {root}: expected {tried}")


def _image_root(root: Path, annotations: Path, sample: str | None, required: bool) -> Path:
    """The folder the split file's relative paths start from (the one holding ``dev/`` ...)."""
    bases = list(dict.fromkeys([root, annotations.parent, annotations]))
    if sample is None:
        return root
    top = Path(sample).parts[0] if Path(sample).parts else ""
    found = find_dir([b / top for b in bases])
    base = found.parent if found is not None else None
    return require_folder(base, [b / top for b in bases], "CIRR image folder", required, root)


def read_split_file(path: Path) -> dict[str, str]:
    """``split.rc2.<split>.json``: image name -> relative path, checked."""
    data = expect_type(read_json(path), dict, path, "the image split")
    for name, rel in data.items():
        if not isinstance(rel, str):
            raise AnnotationError(f"{path}: image {name!r} maps to {rel!r}, expected a relative path string")
    return data


def _triplet(record: object, index: int, path: Path, hidden: bool) -> Triplet:
    where = f"record {index}"
    pairid = get_field(record, "pairid", path, where, int)
    where = f"record {index} (pairid {pairid})"
    reference = get_field(record, "reference", path, where, str)
    caption = get_field(record, "caption", path, where, str)
    img_set = get_field(record, "img_set", path, where, dict)
    members = get_field(img_set, "members", path, f"{where} img_set", list)
    targets: tuple[str, ...] = ()
    extra: dict[str, object] = {"pairid": pairid, "img_set_id": img_set.get("id")}
    if not hidden:
        targets = (get_field(record, "target_hard", path, where, str),)
        extra["target_soft"] = get_field(record, "target_soft", path, where, dict)
    return Triplet(str(pairid), reference, (caption,), targets, tuple(str(m) for m in members), extra)


def _record(name: str, path: Path, root: Path) -> ImageRecord:
    """An image with its official OFFSET mask file (``<name>-segmask.png`` beside it)."""
    from ..masks.layouts import official_mask_path  # here, not at the top: opencir.masks imports torch

    return ImageRecord(name, path, mask_path=official_mask_path("cirr", path, name, root))


@DATASETS.register("cirr")
def load_cirr(root: Path, split: str, require_images: bool = True, caption_policy: str = "first") -> CIRDataset:
    """CIRR ``split`` (train, val or test1; ``dev``/``test`` accepted) from ``root``."""
    split = resolve_split(split, CIRR_SPLITS, SPLIT_ALIASES, "cirr")
    annotations = _annotation_dir(root)
    cap_path = find_file([annotations / "captions" / f"cap.rc2.{split}.json"], f"CIRR {split} captions")
    split_path = find_file([annotations / "image_splits" / f"split.rc2.{split}.json"], f"CIRR {split} image split")
    records = expect_type(read_json(cap_path), list, cap_path, "the caption file")
    image_paths = read_split_file(split_path)
    hidden = split == "test1"
    triplets = [_triplet(r, i, cap_path, hidden) for i, r in enumerate(records)]
    seen: set[str] = set()
    for t in triplets:
        if t.query_id in seen:
            raise AnnotationError(f"{cap_path}: pairid {t.query_id} occurs twice")
        seen.add(t.query_id)
        for image_id in (t.reference_id, *t.target_ids, *t.subset_ids):
            if image_id not in image_paths:
                raise AnnotationError(
                    f"{cap_path}: pairid {t.query_id} refers to image {image_id!r}, absent from {split_path}"
                )
    base = _image_root(root, annotations, next(iter(image_paths.values()), None), require_images)
    images = {name: _record(name, base / rel, root) for name, rel in image_paths.items()}
    return CIRDataset(
        name="cirr",
        split=split,
        root=root,
        triplets=triplets,
        images=images,
        gallery_ids=list(image_paths),
        protocol=cirr_protocol(),
        caption_policy=caption_policy,
        info={"captions_file": str(cap_path), "split_file": str(split_path), "image_root": str(base)},
    )
