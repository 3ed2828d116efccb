"""COCO object composition (Pic2Word): seeded queries from an instances-format fixture."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from opencir.data import load_dataset
from opencir.data.check import AnnotationError, LayoutError
from opencir.data.coco_composition import (
    build_queries,
    decode_rle_counts,
    make_query_crop,
    segmentation_mask,
)
from opencir.evaluation.protocols import evaluate_rankings

W, H = 20, 10


def _encode_rle(runs: list[int]) -> str:
    """COCO's compressed RLE string (the inverse of the decoder under test)."""
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            out.append(chr((c | (0x20 if more else 0)) + 48))
    return "".join(out)


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1)  # column-major
    runs, value, count = [], False, 0
    for v in flat:
        if bool(v) == value:
            count += 1
        else:
            runs.append(count)
            value, count = not value, 1
    runs.append(count)
    return runs


def _box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _instances() -> dict:
    rect = [[2, 2, 8, 2, 8, 6, 2, 6]]
    return {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": W, "height": H} for i in (1, 2, 3, 4)],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "person"}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 4], "segmentation": rect, "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 2, "bbox": [10, 1, 5, 5], "segmentation": [[10, 1, 15, 1, 15, 6, 10, 6]], "iscrowd": 0},
            {"id": 13, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "segmentation": [[1, 1, 4, 1, 4, 4]], "iscrowd": 0},
            {"id": 21, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 1,
             "segmentation": {"counts": [0, 4, 6, 4, 6, 4, 6, 4, 166], "size": [H, W]}},
            {"id": 22, "image_id": 2, "category_id": 2, "bbox": [5, 5, 2.5, 2.5], "iscrowd": 0,
             "segmentation": {"counts": _encode_rle(_runs(_box_mask(5, 5, 7, 7))), "size": [H, W]}},
            # image 4: the only object covers the whole image (>= half its area): no candidate
            {"id": 41, "image_id": 4, "category_id": 2, "bbox": [0, 0, 20, 10], "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]], "iscrowd": 0},
        ],
    }


@pytest.fixture()
def coco_root(tmp_path) -> Path:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(_instances()))
    (tmp_path / "val2017").mkdir()
    for i in (1, 2, 3, 4):
        Image.new("RGB", (W, H), (200, 10 * i, 30)).save(tmp_path / "val2017" / f"{i:012d}.jpg", format="PNG")
    return tmp_path


def test_rle_decoders():
    assert decode_rle_counts(_encode_rle([0, 4, 6, 4, 166, 20])) == [0, 4, 6, 4, 166, 20]
    person = segmentation_mask({"counts": [0, 4, 6, 4, 6, 4, 6, 4, 166], "size": [H, W]}, W, H)
    assert (person == _box_mask(0, 0, 4, 4)).all()
    square = _box_mask(5, 5, 7, 7)
    assert (segmentation_mask({"counts": _encode_rle(_runs(square)), "size": [H, W]}, W, H) == square).all()
    rect = segmentation_mask([[2, 2, 8, 2, 8, 6, 2, 6]], W, H)
    assert rect[4, 5] and not rect[0, 0] and not rect[8, 15]


def test_queries_are_reproducible_and_follow_the_script(coco_root):
    path = coco_root / "annotations" / "instances_val2017.json"
    queries = build_queries(_instances(), path, seed=0)
    assert [q.image_id for q in queries] == [1, 2]  # image 3: no annotation, image 4: no candidate
    assert build_queries(_instances(), path, seed=0) == queries
    picks = {build_queries(_instances(), path, seed=s)[0].annotation["id"] for s in range(30)}
    assert picks == {11, 12, 13}
    for q in queries:
        assert q.query_class not in q.other_classes
    by_pick = {q.annotation["id"]: q for s in range(30) for q in build_queries(_instances(), path, seed=s)}
    assert by_pick[12].prompt == "a photo of * and cat and dog"
    assert by_pick[11].prompt == "a photo of * and dog and cat"  # distinct names: dog once
    assert by_pick[11].region == (2, 2, 8, 6)
    assert by_pick[22].region == (5, 5, 7, 7)  # 7.5 truncated to 7
    assert by_pick[22].text == "cat and person"


def test_loader_writes_crops_once_and_scores(coco_root):
    ds = load_dataset("coco-composition", coco_root, "val", query_size=8)
    assert ds.gallery_ids == ["1", "2"] and [t.query_id for t in ds.triplets] == ["1", "2"]
    t = ds.triplets[0]
    assert t.reference_id == "query/1" and t.target_ids == ("1",)
    assert t.captions[0] == t.extra["query_class"] + " and " + ("cat" if t.extra["query_class"] == "dog" else "dog")
    assert ds.info["zero_shot_prompt"] == "a photo of {placeholder} and {text}"
    crop = Image.open(ds.image_path("query/1"))
    assert crop.size == (8, 8)
    work = coco_root / "opencir_coco_composition" / "seed0"
    rows = list(csv.DictReader(open(work / "queries.csv")))
    assert [r["id"] for r in rows] == ["000000000001.jpg", "000000000002.jpg"]
    # later loads read the manifest only: no source image is opened again
    (coco_root / "val2017" / "000000000001.jpg").unlink()
    again = load_dataset("coco-composition", coco_root, "val", query_size=8)
    assert [x.captions for x in again.triplets] == [x.captions for x in ds.triplets]
    metrics = evaluate_rankings(ds, {"1": ["2", "1"], "2": ["2", "1"]})
    assert metrics == {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0}


def test_crop_keeps_object_and_whitens_the_rest(coco_root):
    path = coco_root / "annotations" / "instances_val2017.json"
    q = next(q for s in range(30) for q in build_queries(_instances(), path, seed=s) if q.annotation["id"] == 13)
    image = Image.new("RGB", (W, H), (200, 10, 30))
    crop = make_query_crop(image, q, size=3)  # box (1, 1, 4, 4) is already 3x3: no resampling
    pixels = np.asarray(crop)
    assert pixels.shape == (3, 3, 3)
    assert tuple(pixels[0, 0]) == (200, 10, 30)  # inside the triangle (1,1)-(4,1)-(4,4)
    assert tuple(pixels[2, 0]) == (255, 255, 255)  # below the diagonal: outside


def test_errors(tmp_path, coco_root):
    with pytest.raises(LayoutError, match="COCO instances file not found"):
        load_dataset("coco-composition", tmp_path / "nothing", "val")
    data = _instances()
    del data["annotations"][1]["bbox"]
    (coco_root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"instances_val2017\.json: annotations\[1\] has no field 'bbox'"):
        load_dataset("coco-composition", coco_root, "val")
