"""`opencir data check`, `opencir eval-rankings`, `opencir submission` and the evaluator's
ranking path: one metric code for model evaluation and for rankings files."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from opencir.backbones import BackboneSpec
from opencir.cli import main
from opencir.data import Triplet, load_dataset
from opencir.data.check import check_images, write_placeholder_images
from opencir.evaluation.evaluator import QueryEmbeddings, evaluate, rank_part
from opencir.evaluation.protocols import evaluate_rankings, parse_rankings
from opencir.methods.io import build_method

NAMES = [f"dev-{c}" for c in "abcdefgh"]


def _cirr(root: Path, split: str = "val", hidden: bool = False) -> Path:
    """A mini CIRR in the official layout: root/cirr/{captions,image_splits}, root/dev/*.png."""
    (root / "cirr" / "captions").mkdir(parents=True, exist_ok=True)
    (root / "cirr" / "image_splits").mkdir(parents=True, exist_ok=True)
    (root / "cirr" / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps({n: f"./dev/{n}.png" for n in NAMES}))
    records = []
    for pairid, (ref, tgt, members) in {10: ("a", "b", "abcdef"), 20: ("c", "h", "cghabd")}.items():
        rec = {"pairid": pairid, "reference": f"dev-{ref}", "caption": f"caption {pairid}",
               "img_set": {"id": 1, "members": [f"dev-{m}" for m in members]}}
        if not hidden:
            rec.update(target_hard=f"dev-{tgt}", target_soft={f"dev-{tgt}": 1.0})
        records.append(rec)
    (root / "cirr" / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(records))
    rng = random.Random(0)
    (root / "dev").mkdir(exist_ok=True)
    for name in NAMES:
        Image.new("RGB", (8, 8), tuple(rng.randrange(256) for _ in range(3))).save(root / "dev" / f"{name}.png")
    return root


def _names(s: str) -> list[str]:
    return [f"dev-{c}" for c in s]


RANKINGS = {"10": _names("acbdefgh"), "20": _names("hgabdef")}
EXPECTED = {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0,
            "Rsubset@1": 50.0, "Rsubset@2": 100.0, "Rsubset@3": 100.0, "Avg": 75.0}


# ----------------------------------------------------------------------------- data check


def test_data_check_ok_then_missing_and_corrupt(tmp_path, capsys):
    root = _cirr(tmp_path)
    assert main(["data", "check", "cirr", "--root", str(root), "--split", "val", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "cirr/val: 8 images checked, 0 missing, 0 unreadable" in out and "OK" in out
    (root / "dev" / "dev-b.png").unlink()
    (root / "dev" / "dev-c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["data", "check", "cirr", "--root", str(root), "--split", "val", "--full"]) == 1
    out = capsys.readouterr().out
    assert "1 missing, 1 unreadable" in out
    assert "missing: dev-b -> " in out and "dev-b.png (no such file)" in out
    assert "unreadable: dev-c -> " in out


def test_data_check_every_split_reports_layout_errors(tmp_path, capsys):
    root = _cirr(tmp_path)
    assert main(["data", "check", "cirr", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "cirr/train: layout error: CIRR train captions not found" in out
    assert "cirr/val: 8 images checked" in out
    assert "2 of 3 split(s) have problems" in out


def test_check_images_api_and_placeholders(tmp_path):
    paths = [tmp_path / "x" / f"{i}.png" for i in range(5)]
    assert write_placeholder_images(paths) == 5 and all(p.is_file() for p in paths)
    ds = load_dataset("cirr", _cirr(tmp_path / "c"), "val")
    report = check_images(ds, progress=False)
    assert report.ok and report.checked == 8


# ----------------------------------------------------------------------------- rankings files


def test_eval_rankings_cli(tmp_path, capsys):
    root = _cirr(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps(RANKINGS))
    out_file = tmp_path / "m" / "metrics.json"
    assert main(["eval-rankings", "cirr", "--root", str(root), "--split", "val",
                 "--rankings", str(tmp_path / "r.json"), "--out", str(out_file)]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED
    assert json.loads(out_file.read_text()) == EXPECTED


def test_eval_rankings_needs_no_images(tmp_path, capsys):
    root = _cirr(tmp_path)
    for p in (root / "dev").iterdir():
        p.unlink()
    (root / "dev").rmdir()
    (tmp_path / "r.json").write_text(json.dumps(RANKINGS))
    assert main(["eval-rankings", "cirr", "--root", str(root), "--split", "val", "--rankings", str(tmp_path / "r.json")]) == 0


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"10": ["dev-a",', "r.json: malformed JSON at line 1"),
        ('["dev-a"]', "r.json: expected a JSON object"),
        ('{"10": "dev-a"}', "the ranking of query '10' must be a list"),
        ('{"10": [{"id": 1}]}', "the ranking of query '10' holds {'id': 1}"),
        (json.dumps({"10": RANKINGS["10"]}), "no ranking for query id '20'"),
        (json.dumps({**RANKINGS, "20": _names("hgabdex")}), "holds 'dev-x', which is not in the cirr/val gallery"),
        (json.dumps({**RANKINGS, "20": _names("hgabdeh")}), "lists 'dev-h' more than once"),
        (json.dumps({**RANKINGS, "10": _names("acbdef")}), "has 5 ids after removing the reference; the protocol needs the top 7"),
    ],
)
def test_eval_rankings_bad_files(tmp_path, capsys, content, message):
    root = _cirr(tmp_path)
    (tmp_path / "r.json").write_text(content)
    assert main(["eval-rankings", "cirr", "--root", str(root), "--split", "val", "--rankings", str(tmp_path / "r.json")]) == 2
    assert message in capsys.readouterr().err


def test_server_files_are_read_as_rankings():
    parsed = parse_rankings({"version": "rc2", "metric": "recall", "10": ["a"], "7": [3, 4]}, "x.json")
    assert parsed == {"10": ["a"], "7": ["3", "4"]}


def test_submission_cli(tmp_path, capsys):
    root = _cirr(tmp_path, "test1", hidden=True)
    (tmp_path / "r.json").write_text(json.dumps(RANKINGS))
    assert main(["submission", "cirr", "--root", str(root), "--split", "test1", "--rankings", str(tmp_path / "r.json"),
                 "--out", str(tmp_path / "sub"), "--tag", "mine"]) == 0
    recall = json.loads((tmp_path / "sub" / "recall_submission_mine.json").read_text())
    subset = json.loads((tmp_path / "sub" / "recall_subset_submission_mine.json").read_text())
    assert recall["10"] == _names("cbdefgh") and subset["20"] == _names("hga")
    assert main(["submission", "fashioniq", "--root", str(root), "--split", "val", "--rankings", str(tmp_path / "r.json"),
                 "--out", str(tmp_path / "x")]) == 2


# ----------------------------------------------------------------------------- evaluator


def test_rank_part_is_chunked_and_matches_a_full_sort():
    torch.manual_seed(0)
    q, g = torch.randn(37, 16), torch.randn(300, 16)
    ids = [f"g{i}" for i in range(300)]
    triplets = [Triplet(str(i), f"g{i}", ("t",), (f"g{i + 1}",), tuple(ids[i : i + 6])) for i in range(37)]
    rankings, scores, subsets = rank_part(QueryEmbeddings(triplets, q, ids, g), 50, True, True)
    full = q @ g.T
    for i, t in enumerate(triplets):
        row = full[i].clone()
        row[i] = float("-inf")
        assert rankings[t.query_id] == [ids[j] for j in torch.argsort(row, descending=True)[:50].tolist()]
        others = [m for m in t.subset_ids if m != t.reference_id]  # the removed reference ranks last
        assert subsets[t.query_id] == [*sorted(others, key=lambda m: -float(full[i, ids.index(m)])), t.reference_id]


def test_model_evaluation_and_rankings_file_agree(tmp_path):
    """The evaluator's metrics equal eval-rankings on the evaluator's own rankings."""
    ds = load_dataset("cirr", _cirr(tmp_path), "val")
    method = build_method("sum", BackboneSpec("tiny-vit"))
    result = evaluate(method, ds, batch_size=4, keep_rankings=True)
    assert set(result.metrics) == set(EXPECTED)
    assert evaluate_rankings(ds, result.rankings, result.subset_rankings) == result.metrics
    # hidden test split: rankings come back, metrics are empty
    test = load_dataset("cirr", _cirr(tmp_path / "t", "test1", hidden=True), "test1")
    hidden = evaluate(method, test, batch_size=4, keep_rankings=True)
    assert hidden.metrics == {} and set(hidden.rankings) == {"10", "20"}
    assert all(t.reference_id not in hidden.rankings[t.query_id] for t in test.triplets)


def test_eval_command_writes_a_submission(tmp_path, capsys):
    root = _cirr(tmp_path, "test1", hidden=True)
    assert main(["eval", "--method", "sum", "--arch", "tiny-vit", "--pretrained", "", "--dataset", "cirr",
                 "--root", str(root), "--split", "test1", "--device", "cpu", "--batch-size", "4",
                 "--cache-dir", str(tmp_path / "cache"), "--submission", str(tmp_path / "sub")]) == 0
    recall = json.loads((tmp_path / "sub" / "recall_submission_opencir.json").read_text())
    subset = json.loads((tmp_path / "sub" / "recall_subset_submission_opencir.json").read_text())
    assert set(recall) == set(subset) == {"version", "metric", "10", "20"}
    assert len(recall["10"]) == 7 and "dev-a" not in recall["10"]  # 8 images minus the reference
    assert len(subset["20"]) == 3 and set(subset["20"]) <= set(_names("ghabd"))
