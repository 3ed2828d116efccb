"""CIRR: the real rc2 annotation files, layout tolerance, errors, metrics and submission."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from opencir.data import load_dataset
from opencir.data.check import AnnotationError, LayoutError, write_placeholder_images
from opencir.data.cirr import cirr_protocol
from opencir.data.submission import cirr_submission, write_cirr_submission
from opencir.evaluation.protocols import evaluate_rankings
from opencir.masks.layouts import require_mask_file

from annotation_files import ANNOTATIONS  # tests/annotation_files.py

ANN = ANNOTATIONS / "cirr"


@pytest.fixture(scope="module")
def cirr_root(tmp_path_factory) -> Path:
    """The official layout: root/cirr/{captions,image_splits} + root/{dev,test1,train}/...,
    with a tiny train caption file in the documented format and placeholder images."""
    root = tmp_path_factory.mktemp("cirr")
    (root / "cirr" / "captions").mkdir(parents=True)
    (root / "cirr" / "image_splits").symlink_to(ANN / "image_splits")
    for split in ("val", "test1"):
        (root / "cirr" / "captions" / f"cap.rc2.{split}.json").symlink_to(ANN / "captions" / f"cap.rc2.{split}.json")
    train_split = json.loads((ANN / "image_splits" / "split.rc2.train.json").read_text())
    names = list(train_split)[:8]
    train = [
        {"pairid": 7 + i, "reference": names[i], "target_hard": names[i + 1], "target_soft": {names[i + 1]: 1.0},
         "caption": f"edit {i}", "img_set": {"id": i, "members": names[:6]}}
        for i in range(3)
    ]
    (root / "cirr" / "captions" / "cap.rc2.train.json").write_text(json.dumps(train))
    for split in ("val", "test1"):
        dataset = load_dataset("cirr", root, split, require_images=False)
        write_placeholder_images(r.path for r in dataset.images.values())
    write_placeholder_images(root / p for p in list(train_split.values())[:8])
    return root


def test_val_counts_and_every_record(cirr_root):
    ds = load_dataset("cirr", cirr_root, "val")
    assert (len(ds.triplets), len(ds.gallery_ids)) == (4181, 2297)
    assert len({t.query_id for t in ds.triplets}) == 4181
    for t in ds.triplets:
        assert len(t.subset_ids) == 6 and t.reference_id in t.subset_ids
        assert len(t.target_ids) == 1 and t.target_ids[0] in ds.images
        assert t.query_id == str(t.extra["pairid"])
    first = ds.triplets[0]
    assert (first.query_id, first.reference_id, first.target_id) == ("12060", "dev-244-0-img0", "dev-1028-1-img1")
    assert first.captions == ("show three bottles of soft drink",)
    assert ds.image_path("dev-244-0-img0") == cirr_root / "dev" / "dev-244-0-img0.png"
    assert ds.image_path("dev-244-0-img0").is_file()
    assert load_dataset("cirr", cirr_root, "dev").split == "val"


def test_records_carry_official_mask_paths(cirr_root):
    ds = load_dataset("cirr", cirr_root, "val")
    record = ds.images["dev-244-0-img0"]
    assert record.mask_path == cirr_root / "dev" / "dev-244-0-img0-segmask.png"
    with pytest.raises(FileNotFoundError, match="run `opencir masks --dataset cirr"):
        require_mask_file(ds, record)


def test_test1_counts_hidden_targets(cirr_root):
    ds = load_dataset("cirr", cirr_root, "test1")
    assert (len(ds.triplets), len(ds.gallery_ids)) == (4148, 2315)
    assert all(not t.target_ids and len(t.subset_ids) == 6 for t in ds.triplets)
    with pytest.raises(ValueError, match="hidden test split"):
        evaluate_rankings(ds, {t.query_id: ds.gallery_ids[:51] for t in ds.triplets})


def test_train_nested_image_folders(cirr_root):
    ds = load_dataset("cirr", cirr_root, "train")
    assert len(ds.triplets) == 3 and len(ds.gallery_ids) == 16939
    t = ds.triplets[0]
    assert ds.image_path(t.reference_id).parent.parent == cirr_root / "train"
    assert ds.image_path(t.reference_id).is_file()


def test_annotation_folder_as_root(cirr_root):
    # root may be the annotation folder itself (captions/ and image_splits/ directly inside)
    ds = load_dataset("cirr", ANN, "val", require_images=False)
    assert len(ds.triplets) == 4181


def test_layout_errors(tmp_path, cirr_root):
    with pytest.raises(LayoutError, match="CIRR annotations not found"):
        load_dataset("cirr", tmp_path, "val")
    with pytest.raises(ValueError, match="unknown split 'val2'"):
        load_dataset("cirr", cirr_root, "val2")
    # images missing: a clear error naming the folders looked for
    with pytest.raises(LayoutError, match="CIRR image folder not found"):
        load_dataset("cirr", ANN, "val")


def _mini_layout(root: Path, records: list[dict], split: str = "val") -> Path:
    (root / "captions").mkdir(parents=True, exist_ok=True)
    (root / "image_splits").mkdir(parents=True, exist_ok=True)
    names = [f"dev-{c}" for c in "abcdefgh"]
    (root / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps({n: f"./dev/{n}.png" for n in names}))
    (root / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(records))
    return root


def _record(pairid, ref, target, members, hidden=False):
    rec = {"pairid": pairid, "reference": f"dev-{ref}", "caption": "x",
           "img_set": {"id": 1, "members": [f"dev-{m}" for m in members]}}
    if not hidden:
        rec.update(target_hard=f"dev-{target}", target_soft={f"dev-{target}": 1.0})
    return rec


def _names(s: str) -> list[str]:
    return [f"dev-{c}" for c in s]


def test_metrics_by_hand(tmp_path):
    root = _mini_layout(tmp_path, [_record(10, "a", "b", "abcdef"), _record(20, "c", "h", "cghabd")])
    ds = load_dataset("cirr", root, "val", require_images=False)
    rankings = {
        # reference a listed first and removed: target b at global rank 2; subset (b,c,d,e,f): c,b,... -> rank 2
        "10": _names("acbdefgh"),
        # target h first; subset (g,h,a,b,d) order h,g,a,b,d -> rank 1
        "20": _names("hgabdef"),
    }
    metrics = evaluate_rankings(ds, rankings)
    assert metrics == {
        "R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0,
        "Rsubset@1": 50.0, "Rsubset@2": 100.0, "Rsubset@3": 100.0,
        "Avg": 75.0,  # (R@5 + Rsubset@1) / 2 = (100 + 50) / 2
    }


def test_subset_recall_undecided_when_ranking_too_short(tmp_path):
    root = _mini_layout(tmp_path, [_record(10, "a", "b", "abcdef")])
    ds = load_dataset("cirr", root, "val", require_images=False)
    # only one member (c) listed and not the target: Rsubset@3 cannot be decided
    with pytest.raises(ValueError, match="undecided"):
        cirr_protocol().evaluate(ds.triplets, {"10": _names("ac")})
    # separate subset rankings decide it: b is second after removing a
    out = cirr_protocol().evaluate(ds.triplets, {"10": _names("acbdefgh")}, {"10": _names("cabdef")})
    assert out["Rsubset@1"] == 0.0 and out["Rsubset@2"] == 100.0


def test_bad_records_name_file_and_record(tmp_path):
    rec = _record(10, "a", "b", "abcdef")
    del rec["caption"]
    root = _mini_layout(tmp_path / "a", [_record(5, "a", "b", "abcdef"), rec])
    with pytest.raises(AnnotationError, match=r"cap\.rc2\.val\.json: record 1 \(pairid 10\) has no field 'caption'"):
        load_dataset("cirr", root, "val", require_images=False)
    root = _mini_layout(tmp_path / "b", [_record(5, "a", "z", "abcdef")])
    with pytest.raises(AnnotationError, match="pairid 5 refers to image 'dev-z'"):
        load_dataset("cirr", root, "val", require_images=False)
    (root / "captions" / "cap.rc2.val.json").write_text('[{"pairid": 1,')
    with pytest.raises(AnnotationError, match=r"cap\.rc2\.val\.json: malformed JSON at line 1"):
        load_dataset("cirr", root, "val", require_images=False)


def test_submission_by_hand(tmp_path):
    root = _mini_layout(tmp_path, [_record(10, "a", None, "abcdef", True), _record(20, "c", None, "cghabd", True)], "test1")
    ds = load_dataset("cirr", root, "test1", require_images=False)
    rankings = {"10": _names("acbdefgh"), "20": _names("hgabdef")}
    recall, subset = cirr_submission(ds, rankings)
    assert recall == {"version": "rc2", "metric": "recall", "10": _names("cbdefgh"), "20": _names("hgabdef")}
    assert subset == {"version": "rc2", "metric": "recall_subset", "10": _names("cbd"), "20": _names("hga")}
    with pytest.raises(KeyError, match="'20'"):
        cirr_submission(ds, {"10": rankings["10"]})


def test_submission_on_real_test1(cirr_root, tmp_path):
    ds = load_dataset("cirr", cirr_root, "test1", require_images=False)
    gallery = ds.gallery_ids
    # a deterministic ranking per query: the gallery rotated by the query's position
    rankings = {t.query_id: gallery[i % 100 :] + gallery[: i % 100] for i, t in enumerate(ds.triplets)}
    paths = write_cirr_submission(ds, rankings, tmp_path, tag="test")
    recall, subset = (json.loads(p.read_text()) for p in paths)
    assert paths[0].name == "recall_submission_test.json"
    assert recall["version"] == subset["version"] == "rc2"
    assert (recall["metric"], subset["metric"]) == ("recall", "recall_subset")
    pairids = {str(t.extra["pairid"]) for t in ds.triplets}
    assert set(recall) - {"version", "metric"} == pairids == set(subset) - {"version", "metric"}
    by_id = {t.query_id: t for t in ds.triplets}
    for key in pairids:
        t = by_id[key]
        assert len(recall[key]) == 50 and t.reference_id not in recall[key]
        assert len(subset[key]) == 3 and t.reference_id not in subset[key]
        assert set(subset[key]) <= set(t.subset_ids)
        assert not any(name.endswith(".png") for name in recall[key])
