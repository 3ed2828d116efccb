"""``opencir data check DATASET --root DIR`` without ``--split`` checks the dataset's own
splits (read after every reader registered them), e.g. CIRCO's val and test."""
from __future__ import annotations

import json
import os
from pathlib import Path

from opencir.cli import main
from opencir.data.check import dataset_splits, write_placeholder_images
from opencir.data.circo import coco_file_name

ANN = Path(os.environ.get("OPENCIR_ANNOTATIONS", Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations"))


def test_split_lists_come_from_the_readers():
    assert dataset_splits("circo") == ("val", "test")
    assert dataset_splits("imagenet-r") == ("test",)
    assert dataset_splits("cirr") == ("train", "val", "test1")
    assert dataset_splits("no-such-dataset") == ("train", "val", "test")


def test_data_check_circo_without_split_on_complete_data(tmp_path, capsys):
    root = tmp_path / "circo"
    root.mkdir()
    (root / "annotations").symlink_to(ANN / "circo" / "annotations")
    ids: set[int] = set()
    for split in ("val", "test"):
        for record in json.loads((ANN / "circo" / "annotations" / f"{split}.json").read_text()):
            ids.update([record["reference_img_id"], *record.get("gt_img_ids", [])])
    write_placeholder_images(root / "COCO2017_unlabeled" / "unlabeled2017" / coco_file_name(i) for i in sorted(ids))
    assert main(["data", "check", "circo", "--root", str(root), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "circo/val:" in out and "circo/test:" in out and "unknown split" not in out
    assert out.rstrip().endswith("OK")
