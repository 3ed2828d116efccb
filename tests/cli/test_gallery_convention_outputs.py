"""``opencir eval`` and ``opencir eval-rankings`` write the FashionIQ gallery convention
into the metrics JSON, so numbers of incomparable conventions are never mixed up."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from opencir.cli import main
from opencir.data.check import write_placeholder_images


def _fashioniq(root: Path) -> Path:
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    records = [{"candidate": "d1", "target": "d2", "captions": ["is red", "longer"]},
               {"candidate": "d3", "target": "d4", "captions": ["is blue", "shorter"]}]
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(records))
    (root / "image_splits" / "split.dress.val.json").write_text(json.dumps([f"d{i}" for i in range(1, 7)]))
    write_placeholder_images(root / "images" / f"d{i}.png" for i in range(1, 7))
    return root


@pytest.mark.parametrize("gallery,expected", [("val-split", "val-split"), ("original-split", "full-val-no-reference"),
                                              ("full-val", "full-val")])
def test_metrics_json_names_the_convention(tmp_path, capsys, gallery, expected):
    root = _fashioniq(tmp_path / "fiq")
    out = tmp_path / "eval"
    assert main(["eval", "--method", "sum", "--arch", "tiny-vit", "--pretrained", "", "--dataset", "fashioniq",
                 "--root", str(root), "--split", "val", "--option", "category=dress", "--option", f"gallery={gallery}",
                 "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--plots"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gallery_convention"] == expected and set(metrics) == {"R@1", "R@10", "R@50", "Avg", "gallery_convention"}
    assert f'"gallery_convention": "{expected}"' in capsys.readouterr().out
    assert main(["eval-rankings", "fashioniq", "--root", str(root), "--split", "val", "--rankings", str(out / "rankings.json"),
                 "--option", "category=dress", "--option", f"gallery={gallery}", "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
