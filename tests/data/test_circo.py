"""CIRCO: real val/test annotations, gallery from the COCO image info file, mAP, submission."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from opencir.data import load_dataset
from opencir.data.check import AnnotationError, LayoutError, write_placeholder_images
from opencir.data.circo import coco_file_name
from opencir.data.submission import circo_submission, write_circo_submission
from opencir.evaluation.protocols import evaluate_rankings

from annotation_files import ANNOTATIONS  # tests/annotation_files.py

ANN = ANNOTATIONS / "circo" / "annotations"
INFO = Path("COCO2017_unlabeled") / "annotations" / "image_info_unlabeled2017.json"


def _write_gallery(root: Path, ids: list[int], with_info: bool = True) -> None:
    if with_info:
        (root / INFO).parent.mkdir(parents=True, exist_ok=True)
        images = [{"id": i, "file_name": coco_file_name(i), "width": 8, "height": 8} for i in ids]
        (root / INFO).write_text(json.dumps({"images": images}))
    write_placeholder_images(root / "COCO2017_unlabeled" / "unlabeled2017" / coco_file_name(i) for i in ids)


@pytest.fixture(scope="module")
def circo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("circo")
    (root / "annotations").symlink_to(ANN)
    ids: set[int] = set()
    for split in ("val", "test"):
        for record in json.loads((ANN / f"{split}.json").read_text()):
            ids.update([record["reference_img_id"], *record.get("gt_img_ids", [])])
    _write_gallery(root, sorted(ids) + [10**9 + i for i in range(60)])  # plus distractors
    return root


def test_real_counts(circo_root):
    val = load_dataset("circo", circo_root, "val")
    test = load_dataset("circo", circo_root, "test")
    assert (len(val.triplets), len(test.triplets)) == (220, 800)
    assert len(val.gallery_ids) == len(test.gallery_ids) == len(set(val.gallery_ids))
    for t in val.triplets:
        assert 1 <= len(t.target_ids) <= 23 and t.reference_id not in t.target_ids
    assert all(not t.target_ids for t in test.triplets)
    first = val.triplets[0]
    assert (first.query_id, first.reference_id) == ("0", "271520")
    assert first.target_ids == ("355099", "528417", "534704")
    assert first.extra["shared_concept"] == "a girl with a traditional Chinese umbrella"
    assert val.image_path("271520") == circo_root / "COCO2017_unlabeled" / "unlabeled2017" / "000000271520.jpg"
    assert val.image_path("271520").is_file()
    assert val.protocol.exclude_reference is False


def test_annotations_only_and_folder_fallback(tmp_path):
    (tmp_path / "annotations").symlink_to(ANN)
    with pytest.raises(LayoutError, match="CIRCO gallery"):
        load_dataset("circo", tmp_path, "val")
    ds = load_dataset("circo", tmp_path, "val", require_images=False)
    assert ds.info["gallery_known"] is False and not ds.gallery_ids
    # without image_info_unlabeled2017.json the unlabeled2017/ listing is the gallery
    root = tmp_path / "listing"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "test.json").write_text(json.dumps([{"id": 0, "reference_img_id": 7, "relative_caption": "x"}]))
    _write_gallery(root, [271520, 355099, 7], with_info=False)
    ds = load_dataset("circo", root, "test")
    assert sorted(ds.gallery_ids) == ["271520", "355099", "7"] and ds.image_path("7").is_file()


def _fixture(root: Path) -> Path:
    (root / "annotations").mkdir()
    val = [
        {"id": 0, "reference_img_id": 1, "target_img_id": 10, "gt_img_ids": [10, 11, 12], "relative_caption": "a"},
        {"id": 1, "reference_img_id": 2, "target_img_id": 20, "gt_img_ids": [20], "relative_caption": "b"},
    ]
    (root / "annotations" / "val.json").write_text(json.dumps(val))
    test = [{"id": i, "reference_img_id": 1 + i, "relative_caption": "c"} for i in range(2)]
    (root / "annotations" / "test.json").write_text(json.dumps(test))
    _write_gallery(root, [1, 2, 10, 11, 12, 20, 30, 31])
    return root


def test_map_by_hand(tmp_path):
    ds = load_dataset("circo", _fixture(tmp_path), "val")
    rankings = {
        "0": ["10", "30", "11", "1", "2", "12", "20", "31"],  # relevant at ranks 1, 3, 6 of |G| = 3
        "1": ["30", "20", "1", "2", "10", "11", "12", "31"],  # relevant at rank 2 of |G| = 1
    }
    m = evaluate_rankings(ds, rankings)
    ap0_5, ap0_10 = (1 + 2 / 3) / 3, (1 + 2 / 3 + 3 / 6) / 3  # AP@5 = 5/9, AP@10 = 13/18
    assert m["mAP@5"] == pytest.approx(100 * (ap0_5 + 1 / 2) / 2, rel=1e-12)  # 52.78
    assert m["mAP@10"] == pytest.approx(100 * (ap0_10 + 1 / 2) / 2, rel=1e-12)  # 61.11
    assert m["mAP@25"] == m["mAP@50"] == m["mAP@10"]
    assert m["R@5"] == 100.0  # first ground truths 10 and 20 at ranks 1 and 2
    # with the reference removed (option), query 0's relevant items move to ranks 1, 3, 5
    ex = load_dataset("circo", tmp_path, "val", exclude_reference=True)
    m2 = evaluate_rankings(ex, {**rankings, "0": rankings["0"]})
    assert m2["mAP@5"] == pytest.approx(100 * ((1 + 2 / 3 + 3 / 5) / 3 + 1 / 2) / 2, rel=1e-12)


def test_errors_name_file_and_record(tmp_path):
    root = _fixture(tmp_path)
    records = json.loads((root / "annotations" / "val.json").read_text())
    records[1]["gt_img_ids"] = [21, 20]
    (root / "annotations" / "val.json").write_text(json.dumps(records))
    with pytest.raises(AnnotationError, match=r"val\.json: record 1 \(id 1\): gt_img_ids must start with target_img_id 20"):
        load_dataset("circo", root, "val")
    del records[1]["relative_caption"]
    (root / "annotations" / "val.json").write_text(json.dumps(records))
    with pytest.raises(AnnotationError, match=r"record 1 \(id 1\) has no field 'relative_caption'"):
        load_dataset("circo", root, "val")


def test_submission_on_real_test(circo_root, tmp_path):
    ds = load_dataset("circo", circo_root, "test", require_images=False)
    gallery = ds.gallery_ids
    rankings = {t.query_id: gallery[i % 7 : i % 7 + 60] for i, t in enumerate(ds.triplets)}
    path = write_circo_submission(ds, rankings, tmp_path)[0]
    out = json.loads(path.read_text())
    assert sorted(out, key=int) == [str(i) for i in range(800)]
    assert all(len(v) == 50 and all(isinstance(i, int) for i in v) for v in out.values())
    assert out["3"] == [int(i) for i in gallery[3:53]]
    with pytest.raises(KeyError, match="every query must be ranked"):
        circo_submission(ds, {"0": rankings["0"]})
