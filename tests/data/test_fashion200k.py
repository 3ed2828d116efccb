"""Fashion200K (TIRG protocol) on fixtures written in the documented label-file format."""
from __future__ import annotations

from pathlib import Path

import pytest

from opencir.data import load_dataset
from opencir.data.check import AnnotationError, LayoutError, write_placeholder_images
from opencir.data.fashion200k import different_words, modification_text
from opencir.evaluation.protocols import evaluate_rankings

TEST_LABELS = {
    "dress_test_detect_all.txt": [
        ("p1", "black ruffle dress"), ("p2", "white ruffle dress"), ("p3", "white ruffle dress"),
        ("p4", "black maxi dress"), ("p5", "blue maxi dress"),
    ],
    "jacket_test_detect_all.txt": [("p6", "black leather jacket"), ("p7", "brown leather jacket")],
}
TRAIN_LABELS = {
    "dress_train_detect_all.txt": [
        ("t1", "red long dress"), ("t2", "blue long dress"), ("t3", "red short dress"),
        ("t4", "green hat"), ("t5", "red long dress"),
    ],
}


def _path(name: str) -> str:
    return f"women/dresses/casual/{name}/{name}_0.jpeg"


def _write(root: Path, labels: dict[str, list[tuple[str, str]]], queries: list[tuple[str, str]] | None) -> Path:
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for file_name, rows in labels.items():
        (root / "labels" / file_name).write_text("".join(f"{_path(n)}\t0.5{i}\t{c}\n" for i, (n, c) in enumerate(rows)))
        write_placeholder_images(root / _path(n) for n, _ in rows)
    if queries is not None:
        (root / "test_queries.txt").write_text("".join(f"{_path(a)} {_path(b)}\n" for a, b in queries))
    return root


@pytest.fixture()
def f200k(tmp_path) -> Path:
    _write(tmp_path, TRAIN_LABELS, None)
    return _write(tmp_path, TEST_LABELS, [("p1", "p2"), ("p4", "p5"), ("p6", "p7")])


def test_test_queries_texts_and_caption_targets(f200k):
    ds = load_dataset("fashion200k", f200k, "test")
    assert len(ds.gallery_ids) == 7 and len(ds.triplets) == 3
    q0, q1, q2 = ds.triplets
    assert q0.captions == ("replace black with white",)
    assert set(q0.target_ids) == {_path("p2"), _path("p3")}  # both images carry the target caption
    assert (q1.captions, q1.target_ids) == (("replace black with blue",), (_path("p5"),))
    assert q2.captions == ("replace black with brown",)
    assert ds.images[_path("p6")].caption == "black leather jacket"
    assert ds.image_path(_path("p1")).is_file()


def test_metrics_by_hand(f200k):
    ds = load_dataset("fashion200k", f200k, "test")
    p = {n: _path(n) for n in ("p1", "p2", "p3", "p4", "p5", "p6", "p7")}
    rankings = {
        "0": [p["p1"], p["p3"], p["p4"], p["p5"], p["p6"], p["p7"], p["p2"]],  # source removed; p3 has the target caption: hit at 1
        "1": [p["p1"], p["p2"], p["p3"], p["p6"], p["p7"], p["p5"]],  # p5 at rank 6
        "2": [p["p7"], p["p1"], p["p2"], p["p3"], p["p4"], p["p5"]],  # hit at 1
    }
    assert evaluate_rankings(ds, rankings) == {"R@1": 200 / 3, "R@10": 100.0, "R@50": 100.0}


def test_tirg_word_rule():
    assert different_words("black ruffle dress", "white ruffle dress") == ("black", "white")
    # every word shared (reordered captions): TIRG falls back to the last words
    assert different_words("long red dress", "red long dress") == ("dress", "dress")
    assert modification_text("a b", "a c") == "replace b with c"


def test_train_pairs_are_one_word_apart_and_reproducible(f200k):
    ds = load_dataset("fashion200k", f200k, "train", seed=3)
    assert len(ds.gallery_ids) == 5
    assert sorted(t.reference_id for t in ds.triplets) == sorted(_path(n) for n in ("t1", "t2", "t3", "t5"))
    for t in ds.triplets:
        source, target = ds.images[t.reference_id].caption, ds.images[t.target_id].caption
        assert len(set(source.split()) ^ set(target.split())) == 2
        assert t.captions == (modification_text(source, target),)
    again = load_dataset("fashion200k", f200k, "train", seed=3)
    assert [(t.reference_id, t.target_ids) for t in again.triplets] == [(t.reference_id, t.target_ids) for t in ds.triplets]
    assert len(load_dataset("fashion200k", f200k, "train", pairs_per_image=2).triplets) == 8


def test_errors(tmp_path):
    with pytest.raises(LayoutError, match="Fashion200K label folder not found"):
        load_dataset("fashion200k", tmp_path, "test")
    root = _write(tmp_path, TEST_LABELS, [("p1", "p9")])
    with pytest.raises(AnnotationError, match=r"test_queries\.txt: line 1 names .*p9.*absent from the test label files"):
        load_dataset("fashion200k", root, "test")
    (root / "labels" / "dress_test_detect_all.txt").write_text("women/x.jpeg only-two-fields\n")
    with pytest.raises(AnnotationError, match=r"dress_test_detect_all\.txt: line 1 must be"):
        load_dataset("fashion200k", root, "test")
    with pytest.raises(LayoutError, match=r"no .*_train_detect_all\.txt label files"):
        load_dataset("fashion200k", root, "train")
