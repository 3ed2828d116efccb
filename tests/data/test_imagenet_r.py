"""ImageNet domain conversion (Pic2Word): the real query/target lists, labels, fraction recall."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from opencir.data import load_dataset
from opencir.data.check import AnnotationError, LayoutError, write_placeholder_images
from opencir.evaluation.protocols import evaluate_rankings

from annotation_files import ANNOTATIONS  # tests/annotation_files.py

ANN = ANNOTATIONS / "imagenet_r"
EPS = 1e-5


@pytest.fixture(scope="module")
def imgnet_root(tmp_path_factory) -> Path:
    """Pic2Word's data/ folder: data/imgnet/{lists, real/, imagenet-r/}."""
    root = tmp_path_factory.mktemp("pic2word-data")
    (root / "imgnet").mkdir()
    for name in ("imgnet_real_query.txt", "imgnet_targets.txt"):
        (root / "imgnet" / name).symlink_to(ANN / name)
    paths = [line.split()[0] for line in (ANN / "imgnet_targets.txt").read_text().splitlines() if line.strip()]
    write_placeholder_images(root / p for p in paths)
    return root


def test_real_lists(imgnet_root):
    ds = load_dataset("imagenet-r", imgnet_root, "test")
    assert list(ds.parts) == ["cartoon", "origami", "toy", "sculpture"]
    assert len(ds.gallery_ids) == 16983 and len(ds.triplets) == 40000
    domains = Counter(p.split("/")[1] for p in ds.gallery_ids)
    assert domains == {"real": 10000, "imagenet-r": 6983}
    by_prefix = Counter(Path(p).name.split("_")[0] for p in ds.gallery_ids if "/imagenet-r/" in p)
    assert by_prefix == {"cartoon": 3726, "origami": 550, "toy": 1511, "sculpture": 1196}
    for name, part in ds.parts.items():
        assert len(part.triplets) == 10000
        t = part.triplets[0]
        assert t.captions == (name,) and part.info["zero_shot_prompt"] == "a {text} of {placeholder}"
        assert all(f"/imagenet-r/" in i and Path(i).name.startswith(name) for i in t.target_ids)
    first = ds.parts["toy"].triplets[0]
    assert first.reference_id == "imgnet/real/n04086273/ILSVRC2012_val_00015728.JPEG"
    assert first.extra["label"] == 2 + 2 * 1000
    assert "imgnet/imagenet-r/n04086273/toy_3.jpg" in first.target_ids
    assert ds.image_path(first.reference_id) == imgnet_root / first.reference_id
    assert ds.image_path(first.reference_id).is_file()
    # queries whose class has no image in a domain keep an empty target set (scored 0)
    assert sum(not t.target_ids for t in ds.parts["origami"].triplets) == 4700
    # root may also be the imgnet/ folder itself
    assert len(load_dataset("imagenet-r", imgnet_root / "imgnet", "test", domains="toy").triplets) == 10000


def _fixture(root: Path) -> Path:
    (root / "imgnet").mkdir()
    (root / "imgnet" / "imgnet_real_query.txt").write_text(
        "imgnet/real/n1/q1.JPEG 5 \nimgnet/real/n2/q2.JPEG 7 \n"
    )
    (root / "imgnet" / "imgnet_targets.txt").write_text(
        "imgnet/imagenet-r/n1/cartoon_1.jpg 5 \nimgnet/imagenet-r/n1/cartoon_2.jpg 5 \n"
        "imgnet/imagenet-r/n1/toy_1.jpg 2005 \nimgnet/imagenet-r/n2/cartoon_3.jpg 7 \n"
        "imgnet/real/n1/q1.JPEG 6005 \nimgnet/real/n2/q2.JPEG 6007 \n"
    )
    return root


def test_fraction_recall_by_hand(tmp_path):
    ds = load_dataset("imagenet-r", _fixture(tmp_path), "test", domains="cartoon,toy", require_images=False)
    g = {Path(p).stem: p for p in ds.gallery_ids}
    everything = [g["q1"], g["cartoon_1"], g["q2"], g["toy_1"], g["cartoon_2"], g["cartoon_3"]]
    rankings = {
        "cartoon/0": everything,  # both cartoon images of class 5 are relevant and listed: 2 / (2 + eps)
        "cartoon/1": everything,  # cartoon_3 (class 7): 1 / (1 + eps)
        "toy/0": everything,  # toy_1: 1 / (1 + eps)
        "toy/1": everything,  # class 7 has no toy image: scores 0 and still counts
    }
    m = evaluate_rankings(ds, rankings)
    cartoon = 100.0 * (2 / (2 + EPS) + 1 / (1 + EPS)) / 2
    toy = 100.0 * (1 / (1 + EPS)) / 2
    assert m["cartoon/R@10"] == m["cartoon/R@50"] == cartoon
    assert m["toy/R@10"] == toy
    assert m["avg/R@10"] == (cartoon + toy) / 2
    # a cut ranking: only one of the two relevant cartoon images in the list
    short = {**rankings, "cartoon/0": [g["cartoon_1"], g["q1"], g["q2"], g["toy_1"], g["cartoon_3"]]}
    with pytest.raises(ValueError, match="needs the top 6"):
        evaluate_rankings(ds, short)


def test_errors(tmp_path):
    root = _fixture(tmp_path)
    with pytest.raises(LayoutError, match="ImageNet / ImageNet-R image folders not found"):
        load_dataset("imagenet-r", root, "test")
    (root / "imgnet" / "imgnet_targets.txt").write_text("imgnet/real/n1/q1.JPEG six\n")
    with pytest.raises(AnnotationError, match=r"imgnet_targets\.txt: line 1 must be '<image path> <integer label>'"):
        load_dataset("imagenet-r", root, "test", require_images=False)
    with pytest.raises(ValueError, match="unknown domain"):
        load_dataset("imagenet-r", root, "test", domains="sketch", require_images=False)
