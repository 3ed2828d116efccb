"""FashionIQ: real annotation files, both gallery conventions, caption policies, metrics."""
from __future__ import annotations

import os

import json
import random
from pathlib import Path

import pytest

from opencir.data import load_dataset
from opencir.data.captions import apply_caption_policy
from opencir.data.check import AnnotationError, LayoutError, write_placeholder_images
from opencir.evaluation.protocols import evaluate_rankings

ANN = Path(os.environ.get("OPENCIR_ANNOTATIONS", Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations")) / "fashioniq"
VAL_QUERIES = {"dress": 2017, "shirt": 2038, "toptee": 1961}
FULL_VAL = {"dress": 3817, "shirt": 6346, "toptee": 5373}  # lines of split.<cat>.val.json
VAL_SPLIT = {"dress": 2628, "shirt": 3089, "toptee": 2902}  # distinct ids of the val triplets


@pytest.fixture(scope="module")
def fiq_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fashioniq")
    (root / "captions").symlink_to(ANN / "captions")
    (root / "image_splits").symlink_to(ANN / "image_splits")
    # placeholders for the dress val images only: loaders never open images, and one
    # category is enough to check that ids resolve to existing files
    dataset = load_dataset("fashioniq", root, "val", category="dress", require_images=False)
    write_placeholder_images(r.path for r in dataset.images.values())
    return root


def test_val_counts_both_conventions(fiq_root):
    full = load_dataset("fashioniq", fiq_root, "val")
    split = load_dataset("fashioniq", fiq_root, "val", gallery="val-split")
    assert list(full.parts) == ["dress", "shirt", "toptee"]
    for cat, part in full.parts.items():
        assert len(part.triplets) == VAL_QUERIES[cat]
        assert len(part.gallery_ids) == FULL_VAL[cat]
        assert len(split.parts[cat].gallery_ids) == VAL_SPLIT[cat]
        assert part.protocol.exclude_reference is False  # CLIP4Cir / Pic2Word: reference kept
        assert split.parts[cat].protocol.exclude_reference is True  # TG-CIR / OFFSET: reference removed
        for t in part.triplets:
            assert len(t.captions) == 2 and len(t.target_ids) == 1
            assert t.reference_id in part.images and t.target_id in part.gallery_ids
            assert t.query_id.startswith(f"{cat}/")
    assert len(full.triplets) == sum(VAL_QUERIES.values())
    assert full.image_path("B0084Y8XIU") == fiq_root / "images" / "B0084Y8XIU.png"
    assert full.image_path("B0084Y8XIU").is_file()
    original = load_dataset("fashioniq", fiq_root, "val", gallery="original-split").parts["dress"]
    assert original.gallery_ids == full.parts["dress"].gallery_ids and original.protocol.exclude_reference is True


def test_train_and_test_splits(fiq_root):
    train = load_dataset("fashioniq", fiq_root, "train", category="dress", require_images=False)
    assert (len(train.triplets), len(train.gallery_ids)) == (5985, 11452) and not train.parts
    test = load_dataset("fashioniq", fiq_root, "test", category="shirt,toptee", require_images=False)
    assert {k: len(p.triplets) for k, p in test.parts.items()} == {"shirt": 2038, "toptee": 2056}
    assert all(not t.target_ids for t in test.triplets)
    # FashionIQ test captions keep their spaces as shipped (the policy strips them)
    raw = next(t for t in load_dataset("fashioniq", fiq_root, "test", category="dress", require_images=False).triplets)
    assert raw.captions == (" yello and more flowing", "short and black")
    with pytest.raises(ValueError, match="val-split gallery needs targets"):
        load_dataset("fashioniq", fiq_root, "test", gallery="val-split", require_images=False)
    with pytest.raises(ValueError, match="unknown category"):
        load_dataset("fashioniq", fiq_root, "val", category="shoes")
    with pytest.raises(KeyError, match="unknown FashionIQ gallery convention 'full'"):
        load_dataset("fashioniq", fiq_root, "val", gallery="full")


def test_caption_policies_on_a_real_record(fiq_root):
    ds = load_dataset("fashioniq", fiq_root, "val", category="toptee")
    assert ds.caption_policy == "clip4cir"
    t = ds.triplets[0]
    assert t.captions == ("is the same", "appears to be exactly the same")
    rng = random.Random(1)
    assert apply_caption_policy("clip4cir", t.captions, False) == "Is the same and appears to be exactly the same"
    assert apply_caption_policy("pic2word", t.captions, False) == "appears to be exactly the same and is the same"
    caps = ("is shiny and silver, ", "Fit and flare.")
    assert apply_caption_policy("clip4cir", caps, False) == "Is shiny and silver and Fit and flare"
    assert apply_caption_policy("tgcir", caps, False) == "is shiny and silver and fit and flare"
    assert apply_caption_policy("reversed", caps, False) == "Fit and flare and is shiny and silver"
    assert apply_caption_policy("pic2word", caps, False) == "Fit and flare. and is shiny and silver, "
    assert len({apply_caption_policy("clip4cir", caps, True, rng) for _ in range(200)}) == 4


def test_records_carry_official_mask_paths(fiq_root):
    # flat images/ folder: masks go to <root>/<category>_segmask/<id>-seg.png
    ds = load_dataset("fashioniq", fiq_root, "val")
    for category, part in ds.parts.items():
        image_id = part.triplets[0].reference_id
        assert part.images[image_id].mask_path == fiq_root / f"{category}_segmask" / f"{image_id}-seg.png"


def test_spelling_corrections_and_image_folder_variants(tmp_path):
    (tmp_path / "json").mkdir()
    (tmp_path / "image_splits").mkdir()
    records = [{"candidate": "A1", "target": "A2", "captions": ["Is Blu!", "lnger sleeves"]}]
    (tmp_path / "json" / "cap.dress.val.json").write_text(json.dumps(records))
    (tmp_path / "image_splits" / "split.dress.val.json").write_text(json.dumps(["A1", "A2", "A3"]))
    (tmp_path / "correction_dict_dress.json").write_text(json.dumps({"blu": "blue", "lnger": "longer"}))
    write_placeholder_images(tmp_path / "resized_image" / "dress" / f"A{i}.jpg" for i in (1, 2, 3))
    ds = load_dataset("fashioniq", tmp_path, "val", category="dress", corrections="auto")
    assert ds.triplets[0].captions == ("Is Blu!", "lnger sleeves")  # raw: methods apply their own rule
    assert ds.info["spelling_dictionaries"] == {"dress": {"blu": "blue", "lnger": "longer"}}
    assert ds.triplets[0].extra["spelling_dictionary"] == "dress"
    assert load_dataset("fashioniq", tmp_path, "val", category="dress", corrections="none").info["spelling_dictionaries"] == {}
    assert ds.image_path("A3") == tmp_path / "resized_image" / "dress" / "A3.jpg"
    assert ds.images["A3"].mask_path == tmp_path / "resized_image" / "dress_segmask" / "A3-seg.png"
    with pytest.raises(LayoutError, match="shirt val captions not found"):
        load_dataset("fashioniq", tmp_path, "val", category="shirt")


def _write_fixture(root: Path) -> None:
    (root / "captions").mkdir()
    (root / "image_splits").mkdir()
    dress = [{"candidate": "d1", "target": "d2", "captions": ["a", "b"]}, {"candidate": "d3", "target": "d4", "captions": ["c", "d"]}]
    shirt = [{"candidate": "s1", "target": "s2", "captions": ["e", "f"]}]
    for cat, recs, ids in (("dress", dress, [f"d{i}" for i in range(1, 6)]), ("shirt", shirt, [f"s{i}" for i in range(1, 13)])):
        (root / "captions" / f"cap.{cat}.val.json").write_text(json.dumps(recs))
        (root / "image_splits" / f"split.{cat}.val.json").write_text(json.dumps(ids))


def test_metrics_by_hand_and_category_average(tmp_path):
    _write_fixture(tmp_path)
    ds = load_dataset("fashioniq", tmp_path, "val", category="dress,shirt", require_images=False)
    rankings = {
        "dress/0": ["d1", "d3", "d4", "d5", "d2"],  # target d2 at rank 5 (reference d1 kept, full-val)
        "dress/1": ["d4", "d1", "d2", "d3", "d5"],  # rank 1
        "shirt/0": ["s1", *[f"s{i}" for i in range(3, 13)], "s2"],  # rank 12
    }
    metrics = evaluate_rankings(ds, rankings)
    assert metrics == {
        "dress/R@1": 50.0, "dress/R@10": 100.0, "dress/R@50": 100.0, "dress/Avg": 100.0,
        "shirt/R@1": 0.0, "shirt/R@10": 0.0, "shirt/R@50": 100.0, "shirt/Avg": 50.0,
        "avg/R@1": 25.0, "avg/R@10": 50.0, "avg/R@50": 100.0, "avg/Avg": 75.0,
        "gallery_convention": "full-val",  # every FashionIQ metrics dict names its convention
    }
    # val-split: gallery {d1..d4} (d5 unused) and the reference removed
    vs = load_dataset("fashioniq", tmp_path, "val", category="dress", gallery="val-split", require_images=False)
    assert vs.gallery_ids == ["d1", "d2", "d3", "d4"]
    out = evaluate_rankings(vs, {"dress/0": ["d1", "d3", "d4", "d2"], "dress/1": ["d4", "d1", "d2"]})
    assert out == {"R@1": 50.0, "R@10": 100.0, "R@50": 100.0, "Avg": 100.0,  # d2 at rank 3 once d1 is removed
                   "gallery_convention": "val-split"}
    with pytest.raises(ValueError, match="'d5', which is not in the fashioniq/val gallery"):
        evaluate_rankings(vs, {"dress/0": ["d5", "d3", "d4", "d2"], "dress/1": ["d4", "d1", "d2"]})


def test_missing_field_names_file_and_record(tmp_path):
    _write_fixture(tmp_path)
    (tmp_path / "captions" / "cap.dress.val.json").write_text(json.dumps([{"candidate": "d1", "target": "d2"}]))
    with pytest.raises(AnnotationError, match=r"cap\.dress\.val\.json: record 0 has no field 'captions'"):
        load_dataset("fashioniq", tmp_path, "val", category="dress", require_images=False)
    with pytest.raises(LayoutError, match="FashionIQ image folder not found"):
        load_dataset("fashioniq", tmp_path, "val", category="shirt")
