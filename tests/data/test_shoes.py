"""Shoes: real annotation files (split by the image lists), nested image folders, metrics."""
from __future__ import annotations

import os

import json
import re
from pathlib import Path

import pytest

from opencir.data import load_dataset
from opencir.data.check import AnnotationError, LayoutError, write_placeholder_images
from opencir.evaluation.protocols import evaluate_rankings

ANN = Path(os.environ.get("OPENCIR_ANNOTATIONS", Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations")) / "shoes"
FILES = ("relative_captions_shoes.json", "train_im_names.txt", "eval_im_names.txt", "captions_shoes.json")


def _folder(name: str) -> str:
    """img_womens_clogs_851.jpg lives in womens_clogs/<n>/ in the attribute-discovery layout."""
    return re.sub(r"^img_(.*)_\d+\.jpg$", r"\1", name)


@pytest.fixture(scope="module")
def shoes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shoes")
    for name in FILES:
        (root / name).symlink_to(ANN / name)
    evals = (ANN / "eval_im_names.txt").read_text().split()
    write_placeholder_images(root / _folder(n) / "0" / n for n in evals)
    return root


def test_real_counts_and_split_rule(shoes_root):
    test = load_dataset("shoes", shoes_root, "test")
    train = load_dataset("shoes", shoes_root, "train", require_images=False)
    assert (len(train.triplets), len(test.triplets)) == (8990, 1761)
    assert (len(train.gallery_ids), len(test.gallery_ids)) == (10000, 4658)
    gallery = set(test.gallery_ids)
    for t in test.triplets:
        assert t.reference_id in gallery and t.target_id in gallery and len(t.captions) == 1
    assert test.protocol.exclude_reference
    first = next(t for t in train.triplets if t.query_id == "0")
    assert (first.reference_id, first.target_id) == ("img_womens_clogs_512.jpg", "img_womens_clogs_851.jpg")
    assert first.captions == ("is more of a textured material",)
    path = test.image_path(test.gallery_ids[0])
    assert path.is_file() and path.parent.parent.name.startswith("womens_")
    assert load_dataset("shoes", shoes_root, "eval").split == "test"
    # single-image captions are attached to the image records
    assert sum(r.caption is not None for r in train.images.values()) > 0
    # and so is the official OFFSET mask file, next to the image
    assert test.images[test.gallery_ids[0]].mask_path == path.with_name(f"{path.stem}-segmask.jpg")


def _fixture(root: Path) -> Path:
    (root / "train_im_names.txt").write_text("t1.jpg\nt2.jpg\nt3.jpg\n")
    (root / "eval_im_names.txt").write_text("".join(f"e{i}.jpg\n" for i in range(1, 13)))
    pairs = [("e1", "e2"), ("e3", "e4"), ("t1", "t2"), ("e5", "e6")]
    records = [{"ReferenceImageName": f"{r}.jpg", "ImageName": f"{t}.jpg", "RelativeCaption": "Is Redd!"} for r, t in pairs]
    (root / "relative_captions_shoes.json").write_text(json.dumps(records))
    return root


def _e(*numbers: int) -> list[str]:
    return [f"e{i}.jpg" for i in numbers]


def test_metrics_by_hand(tmp_path):
    ds = load_dataset("shoes", _fixture(tmp_path), "test", require_images=False)
    assert [t.query_id for t in ds.triplets] == ["0", "1", "3"]
    rankings = {
        "0": _e(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12),  # reference e1 removed: target e2 at rank 1
        "1": _e(5, 6, 7, 8, 9, 10, 11, 12, 1, 2, 4),  # target e4 at rank 11
        "3": _e(1, 2, 3, 4, 7, 8, 9, 10, 11, 6, 12),  # target e6 at rank 10
    }
    metrics = evaluate_rankings(ds, rankings)
    assert metrics["R@1"] == 100 / 3 and metrics["R@10"] == 200 / 3 and metrics["R@50"] == 100.0
    assert metrics["Avg"] == pytest.approx((100 / 3 + 200 / 3 + 100) / 3, rel=1e-12)
    with pytest.raises(ValueError, match="has 10 ids after removing the reference; the protocol needs the top 11"):
        evaluate_rankings(ds, {**rankings, "0": _e(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)})


def test_corrections_and_errors(tmp_path):
    root = _fixture(tmp_path)
    (root / "correction_dict_shoes.json").write_text(json.dumps({"redd": "red"}))
    ds = load_dataset("shoes", root, "test", require_images=False, corrections="auto")
    assert ds.info["spelling_dictionaries"] == {"shoes": {"redd": "red"}} and ds.info["spelling_dictionary"] == "shoes"
    with pytest.raises(LayoutError, match="Shoes spelling dictionary not found"):
        load_dataset("shoes", root, "test", require_images=False, corrections=str(tmp_path / "elsewhere"))
    with pytest.raises(LayoutError, match="Shoes image folders not found"):
        load_dataset("shoes", root, "test")
    (root / "relative_captions_shoes.json").write_text(json.dumps([{"ReferenceImageName": "e1.jpg", "ImageName": "e2.jpg"}]))
    with pytest.raises(AnnotationError, match=r"relative_captions_shoes\.json: record 0 has no field 'RelativeCaption'"):
        load_dataset("shoes", root, "test", require_images=False)
    (root / "eval_im_names.txt").unlink()
    with pytest.raises(LayoutError, match="Shoes test image list not found"):
        load_dataset("shoes", root, "test", require_images=False)
