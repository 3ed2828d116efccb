"""``opencir index`` / ``opencir search`` end to end through the CLI entry point."""
from __future__ import annotations

import json

from opencir.cli import main


def test_index_then_search_by_id_and_image(tmp_path, capsys, model_dir, image_folder):
    out = tmp_path / "idx"
    assert main(["index", "--model", str(model_dir), "--images", str(image_folder), "--out", str(out),
                 "--shard-size", "10", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["added"], report["encoded_shards"], report["total"]) == (24, 3, 24)

    # the index remembers its model: --model is optional for search
    assert main(["search", "--index", str(out), "--ref-id", "img003", "--text", "make it red", "-k", "4", "--json",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    ids = [hit["image_id"] for hit in result["results"]]
    assert len(ids) == 4 and "img003" not in ids and result["reference_id"] == "img003"
    assert all(hit["path"].endswith(f"{hit['image_id']}.png") for hit in result["results"])
    scores = [hit["score"] for hit in result["results"]]
    assert scores == sorted(scores, reverse=True)

    assert main(["search", "--index", str(out), "--model", str(model_dir), "--image", str(image_folder / "img003.png"),
                 "--text", "make it red", "-k", "3", "--device", "cpu"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "score", "image_id", "path"] and len(table) == 4
    assert table[1].split()[0] == "1"

    assert main(["index", "--out", str(out), "--delete", "img000", "--delete", "img001"]) == 0
    assert "now holds 22" in capsys.readouterr().out


def test_cli_errors_are_one_clear_line(tmp_path, capsys, model_dir, other_model_dir, image_folder):
    out = tmp_path / "idx"
    assert main(["index", "--model", str(model_dir), "--images", str(image_folder), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["index", "--model", str(other_model_dir), "--images", str(image_folder), "--out", str(out)]) == 2
    assert "not the model that built the index" in capsys.readouterr().err
    assert main(["search", "--index", str(out), "--ref-id", "nope", "--text", "x"]) == 2
    assert "image id 'nope' is not in the index" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path / "missing"), "--ref-id", "a", "--text", "x"]) == 2
    assert "not an OpenCIR index directory" in capsys.readouterr().err
    assert main(["index", "--out", str(out), "--images", str(image_folder)]) == 2
    assert "give --model DIR|hf-hub:ORG/NAME and --images" in capsys.readouterr().err
    assert main(["index", "--out", str(tmp_path / "new"), "--model", str(model_dir), "--images", str(image_folder),
                 "--factory", "HNSW8"]) == 2
    assert "--factory needs --backend faiss" in capsys.readouterr().err


def test_index_verify_reports_and_names_a_damaged_file(tmp_path, capsys, model_dir, image_folder):
    out = tmp_path / "idx"
    assert main(["index", "--model", str(model_dir), "--images", str(image_folder), "--out", str(out),
                 "--backend", "faiss", "--factory", "HNSW8"]) == 0
    capsys.readouterr()
    assert main(["index", "--out", str(out), "--verify"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["files"] == report["hashed"] >= 3
    manifest = json.loads((out / "manifest.json").read_text())
    target = out / manifest["backend"]["state"]["index_file"]
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x10
    target.write_bytes(bytes(data))
    assert main(["index", "--out", str(out), "--verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and "damaged" in err[0]
    assert main(["search", "--index", str(out), "--ref-id", "img001", "--text", "x"]) == 2
    assert str(target) in capsys.readouterr().err
    assert main(["index", "--out", str(out), "--verify", "--delete", "img001"]) == 2
    assert "--verify is used on its own" in capsys.readouterr().err
