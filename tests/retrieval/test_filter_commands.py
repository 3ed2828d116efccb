"""``opencir index --target-recall`` and ``opencir search --filter / --target-recall`` end to end."""
from __future__ import annotations

import csv
import json

from opencir.cli import main
from opencir.retrieval.store import read_manifest


def _manifest(tmp_path, image_folder) -> str:
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "path", "color", "price"])
        for i, image in enumerate(sorted(image_folder.glob("*.png"))):
            writer.writerow([image.stem, image, ["red", "blue", "green"][i % 3], str(10 * i)])
    return str(path)


def test_index_with_target_recall_then_filtered_search(tmp_path, capsys, model_dir, image_folder):
    out = tmp_path / "idx"
    assert main(["index", "--model", str(model_dir), "--images", _manifest(tmp_path, image_folder), "--out", str(out),
                 "--backend", "faiss", "--factory", "IVF4,Flat", "--option", "nprobe=1", "--target-recall", "0.95",
                 "--tune-sample", "20", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)  # one JSON document: the index summary with its tuning
    assert printed["added"] == 24
    tuning = printed["tuning"]
    assert tuning["knob"] == "nprobe" and tuning["met"] and tuning["recall"] >= 0.95
    assert read_manifest(out)["backend"]["options"]["nprobe"] == tuning["chosen"]

    assert main(["search", "--index", str(out), "--ref-id", "img003", "--text", "make it red", "-k", "24", "--json",
                 "--filter", "color=red|green", "--filter", "price<150", "--target-recall", "0.99"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    expected = {f"img{i:03d}" for i in range(24) if i % 3 != 1 and 10 * i < 150} - {"img003"}
    assert {h["image_id"] for h in hits} == expected
    assert all(h["metadata"]["color"] in ("red", "green") for h in hits)

    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query_id": "a", "ref_id": "img003", "text": "red"}\n{"query_id": "b", "ref_id": "img004", "text": "x"}\n')
    assert main(["search", "--index", str(out), "--queries", str(queries), "-k", "24", "--filter", "color=blue"]) == 0
    rankings = json.loads(capsys.readouterr().out)
    blue = {f"img{i:03d}" for i in range(24) if i % 3 == 1}
    assert set(rankings["a"]) == blue and set(rankings["b"]) == blue - {"img004"}

    # retune alone, without --model / --images
    assert main(["index", "--out", str(out), "--target-recall", "0.5", "--tune-sample", "10"]) == 0
    assert read_manifest(out)["tuning"]["target_recall"] == 0.5


def test_filter_and_target_errors_are_one_line(tmp_path, capsys, model_dir, image_folder):
    out = tmp_path / "idx"
    assert main(["index", "--model", str(model_dir), "--images", str(image_folder), "--out", str(out),
                 "--backend", "faiss", "--factory", "IVF2,Flat"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--ref-id", "img001", "--text", "x", "--filter", "price"]) == 2
    assert "is not of the form FIELD=VALUE" in capsys.readouterr().err
    assert main(["search", "--index", str(out), "--ref-id", "img001", "--text", "x", "--target-recall", "0.9"]) == 2
    assert "has no recall curve; tune it first" in capsys.readouterr().err
    assert main(["index", "--out", str(out), "--target-recall", "2"]) == 2
    assert "target recall must be a number in (0, 1]" in capsys.readouterr().err
