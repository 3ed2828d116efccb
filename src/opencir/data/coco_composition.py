"""Pic2Word's COCO object composition (zero-shot protocol, spec 1.6) [CODE].

Layout (Pic2Word's ``data/coco``)::

    root/
      annotations/instances_val2017.json
      val2017/000000000139.jpg ...

Pic2Word ships no query file: its script draws one object per image at random, without
a seed. Here the draw is reproducible: images in increasing id order, one
``random.Random(seed)`` (default 0) sampling one candidate per image. Everything else
follows the script:

1. candidates are the image's annotations whose box area ``w*h`` satisfies
   ``0.05 < w*h < 0.5 * width * height`` (pixels: the lower bound is no bound);
   images without annotations or candidates give no query;
2. the query image keeps the object's pixels (its segmentation: polygons or RLE), sets
   all other pixels to white, is cropped to the box with corners truncated to ints, and
   is resized to a square without a centre crop (``query_size``, 224; the method's own
   resize then leaves the aspect ratio as stretched) [INFERRED: the second resize];
3. the text is ``"a photo of * and {query class} and {other classes}"`` where the other
   classes are the image's distinct class names (annotation order) minus the query's
   class, joined by " and " (empty when there is none, which leaves a trailing " and ",
   as the official CSV round trip does). The caption is ``"{query class} and {others}"``
   and ``info["zero_shot_prompt"] = "a photo of {placeholder} and {text}"`` is the
   template the pseudo-word methods fill (``methods/pseudo_word.py``); other methods see
   the caption alone (Pic2Word's text-only baseline encodes "a photo of {caption}").

The target is the original image; the gallery is every image with a query. R@1/5/10,
nothing removed. Masks are rasterised with PIL (pycocotools' polygon rasteriser may
differ by a pixel on borders) [INFERRED].

The query crops and a Pic2Word-style ``queries.csv`` are written once under
``work_dir`` (default ``root/opencir_coco_composition/seed<seed>/``) the first time the
split is loaded with images; later loads only read ``manifest.json``.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..evaluation.protocols import RecallProtocol
from .check import SPLITS, AnnotationError, expect_type, find_file, get_field, read_json, require_folder, resolve_split
from .images import load_image
from .registry import DATASETS
from .types import ZERO_SHOT_PROMPT_KEY, CIRDataset, ImageRecord, Triplet

SPLITS.register("coco-composition")(("val",))
CROP_PREFIX = "query/"
PROMPT = "a photo of {placeholder} and {text}"
"""Pic2Word's "a photo of * and {query class} and {others}" (spec 4.1.4) as a template."""


def coco_protocol() -> RecallProtocol:
    """R@1/5/10 of the full image, nothing removed."""
    return RecallProtocol(ks=(1, 5, 10), exclude_reference=False)


@dataclass(frozen=True)
class CompositionQuery:
    """One generated query: the image, the chosen annotation and the class names."""

    image_id: int
    file_name: str
    width: int
    height: int
    region: tuple[int, int, int, int]
    query_class: str
    other_classes: tuple[str, ...]
    annotation: dict[str, Any]

    @property
    def prompt(self) -> str:
        return f"a photo of * and {self.query_class} and {' and '.join(self.other_classes)}"

    @property
    def text(self) -> str:
        """The ``{text}`` slot of the prompt: query class and the other classes."""
        return f"{self.query_class} and {' and '.join(self.other_classes)}"


def build_queries(instances: dict[str, Any], path: Path, seed: int = 0) -> list[CompositionQuery]:
    """The reproducible query list from a COCO instances dict (no image is opened)."""
    categories = {
        get_field(c, "id", path, f"categories[{i}]", int): get_field(c, "name", path, f"categories[{i}]", str)
        for i, c in enumerate(get_field(instances, "categories", path, "the file", list))
    }
    images = {}
    for i, record in enumerate(get_field(instances, "images", path, "the file", list)):
        image_id = get_field(record, "id", path, f"images[{i}]", int)
        where = f"images[{i}] (id {image_id})"
        images[image_id] = (
            get_field(record, "file_name", path, where, str),
            get_field(record, "width", path, where, int),
            get_field(record, "height", path, where, int),
        )
    by_image: dict[int, list[dict[str, Any]]] = {}
    for i, ann in enumerate(get_field(instances, "annotations", path, "the file", list)):
        where = f"annotations[{i}]"
        image_id = get_field(ann, "image_id", path, where, int)
        bbox = get_field(ann, "bbox", path, where, list)
        if len(bbox) != 4:
            raise AnnotationError(f"{path}: {where} bbox must have 4 numbers, got {bbox}")
        if get_field(ann, "category_id", path, where, int) not in categories:
            raise AnnotationError(f"{path}: {where} has unknown category_id {ann['category_id']}")
        if image_id not in images:
            raise AnnotationError(f"{path}: {where} refers to unknown image_id {image_id}")
        get_field(ann, "segmentation", path, where, (list, dict))
        by_image.setdefault(image_id, []).append(ann)
    rng = random.Random(seed)
    queries = []
    for image_id in sorted(by_image):
        file_name, width, height = images[image_id]
        anns = by_image[image_id]
        candidates = [a for a in anns if 0.05 < float(a["bbox"][2]) * float(a["bbox"][3]) < 0.5 * width * height]
        if not candidates:
            continue
        chosen = rng.sample(candidates, k=1)[0]
        names = list(dict.fromkeys(categories[a["category_id"]] for a in anns))
        query_class = categories[chosen["category_id"]]
        names.remove(query_class)
        x, y, w, h = (float(v) for v in chosen["bbox"])
        region = (int(x), int(y), int(x + w), int(y + h))
        queries.append(CompositionQuery(image_id, file_name, width, height, region, query_class, tuple(names), chosen))
    return queries


# ----------------------------------------------------------------------------- masks


def decode_rle_counts(counts: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths (6-bit groups, delta-coded after 2)."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        value, shift, more = 0, 0, True
        while more:
            c = ord(counts[p]) - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            p += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def segmentation_mask(segmentation: list | dict, width: int, height: int) -> np.ndarray:
    """(height, width) bool mask of a COCO segmentation (polygons, RLE or compressed RLE)."""
    if isinstance(segmentation, list):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in segmentation:
            if len(polygon) >= 6:
                draw.polygon([(float(polygon[i]), float(polygon[i + 1])) for i in range(0, len(polygon) - 1, 2)], fill=1)
        return np.asarray(canvas, dtype=bool)
    counts = segmentation["counts"]
    rh, rw = segmentation.get("size", (height, width))
    runs = decode_rle_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    flat = np.zeros(rh * rw, dtype=bool)
    position, value = 0, False
    for run in runs:
        if value:
            flat[position : position + run] = True
        position += run
        value = not value
    return flat.reshape(rw, rh).T  # RLE runs go down the columns


def make_query_crop(image: Image.Image, query: CompositionQuery, size: int) -> Image.Image:
    """Masked (object kept, rest white), cropped to the box and stretched to ``size`` x ``size``."""
    rgb = np.asarray(image.convert("RGB"))
    mask = segmentation_mask(query.annotation["segmentation"], rgb.shape[1], rgb.shape[0])
    masked = np.where(mask[..., None], rgb, 255).astype(np.uint8)
    crop = Image.fromarray(masked).crop(query.region)
    return crop.resize((size, size), Image.BICUBIC)


def write_queries_csv(queries: Sequence[CompositionQuery], path: Path) -> None:
    """The query list in Pic2Word's CSV columns (id, query_regions, query_class, classes)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "query_regions", "query_class", "classes"])
        for q in queries:
            writer.writerow([q.file_name, ";".join(map(str, q.region)), q.query_class, ";".join(q.other_classes)])


def materialize_crops(queries: Sequence[CompositionQuery], image_dir: Path, work_dir: Path, size: int, seed: int) -> None:
    """Write every query crop (once), the CSV and a manifest marking completion."""
    manifest = work_dir / "manifest.json"
    expected = {"seed": seed, "query_size": size, "queries": len(queries)}
    if manifest.is_file() and json.loads(manifest.read_text()) == expected:
        return
    (work_dir / "crops").mkdir(parents=True, exist_ok=True)
    for q in tqdm(queries, desc="coco-composition query crops", disable=None):
        crop = make_query_crop(load_image(image_dir / q.file_name), q, size)
        crop.save(work_dir / "crops" / f"{q.image_id}.png")
    write_queries_csv(queries, work_dir / "queries.csv")
    manifest.write_text(json.dumps(expected))


@DATASETS.register("coco-composition")
def load_coco_composition(
    root: Path,
    split: str = "val",
    seed: int = 0,
    query_size: int = 224,
    work_dir: str | None = None,
    require_images: bool = True,
) -> CIRDataset:
    """The object-composition queries of COCO val2017 drawn with ``seed``."""
    split = resolve_split(split, ("val",), {"test": "val", "val2017": "val"}, "coco-composition")
    path = find_file([root / "annotations" / "instances_val2017.json", root / "instances_val2017.json"], "COCO instances file")
    instances = expect_type(read_json(path), dict, path, "the instances file")
    queries = build_queries(instances, path, seed)
    image_dir = root / "val2017"
    require_folder(image_dir if image_dir.is_dir() else None, [image_dir], "COCO val2017 image folder", require_images)
    out = Path(work_dir).expanduser() if work_dir else root / "opencir_coco_composition" / f"seed{seed}"
    if require_images:
        materialize_crops(queries, image_dir, out, query_size, seed)
    images: dict[str, ImageRecord] = {}
    triplets = []
    for q in queries:
        target = str(q.image_id)
        crop = f"{CROP_PREFIX}{q.image_id}"
        images[target] = ImageRecord(target, image_dir / q.file_name)
        images[crop] = ImageRecord(crop, out / "crops" / f"{q.image_id}.png")
        extra = {"query_class": q.query_class, "region": q.region}
        triplets.append(Triplet(target, crop, (q.text,), (target,), (), extra))
    return CIRDataset(
        name="coco-composition",
        split=split,
        root=root,
        triplets=triplets,
        images=images,
        gallery_ids=[str(q.image_id) for q in queries],
        protocol=coco_protocol(),
        caption_policy="first",
        info={ZERO_SHOT_PROMPT_KEY: PROMPT, "seed": seed, "instances_file": str(path), "work_dir": str(out), "derived_prefix": CROP_PREFIX},
    )
