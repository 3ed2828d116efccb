"""The opencir command line: commands run for real; bad input gives one clear error line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import opencir

from opencir.backbones import BackboneSpec
from opencir.cli import main
from opencir.methods.io import build_method, save_model


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_every_documented_command_is_registered():
    result = subprocess.run([sys.executable, "-m", "opencir.cli", "--help"], capture_output=True, text=True, check=True)
    for name in ("train", "eval", "pretrain-clip", "data", "demo"):
        assert name in result.stdout
    data = subprocess.run([sys.executable, "-m", "opencir.cli", "data", "--help"], capture_output=True, text=True, check=True)
    assert "synth" in data.stdout


def test_data_synth_writes_a_loadable_benchmark(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["data", "synth", "--out", str(out), "--train", "30", "--val", "10", "--test", "10",
                 "--image-size", "32", "--workers", "1"]) == 0
    assert (out / "meta.json").is_file() and (out / "train.json").is_file()
    assert "wrote cir-shapes" in capsys.readouterr().out


def test_eval_baseline_writes_metrics_and_pictures(shapes_root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--method", "sum", "--arch", "tiny-vit", "--pretrained", "", "--dataset", "cir-shapes",
                 "--root", str(shapes_root), "--split", "val", "--out", str(out), "--plots", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr()
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["metrics"]) == {"R@1", "R@5", "R@10", "R@50"}
    assert json.loads(printed.out) == record["metrics"]  # stdout is pure JSON; "wrote ..." goes to stderr
    assert f"wrote {out}" in printed.err
    provenance = record["provenance"]
    assert provenance["model"]["method"] == "sum" and provenance["model"]["directory"] is None
    assert len(provenance["model"]["fingerprint"]) == 20
    assert provenance["dataset"] == {"name": "cir-shapes", "root": str(shapes_root.resolve()), "split": "val",
                                     "options": {}}
    assert provenance["queries"] == 40 and provenance["gallery"]["size"] == len(
        json.loads((shapes_root / "val.json").read_text())["gallery"])
    assert provenance["gallery"]["convention"] == "official" and provenance["gallery"]["reference_excluded"] is False
    assert provenance["opencir_version"] == opencir.__version__ and provenance["date"].startswith("20")
    analysis = json.loads((out / "analysis.json").read_text())  # sum composes image and text: shortcut analysis
    assert analysis["shortcuts"]["subset"] == "composition-only" and "neither image-only" in analysis["shortcuts"]["rule"]
    assert record["shortcuts"] == analysis["shortcuts"]  # the metrics JSON names the subset and the rule too
    assert set(record["shortcuts"]["at"]) == set(record["metrics"])
    assert (out / "metrics.png").stat().st_size > 0 and (out / "retrieval_grid.png").stat().st_size > 0
    rankings = json.loads((out / "rankings.json").read_text())
    assert len(rankings) == 40 and all(len(r) == 50 for r in rankings.values())


def test_unknown_method_lists_valid_names(shapes_root, capsys):
    err = _error(capsys, ["eval", "--method", "clip5cir", "--arch", "tiny-vit", "--pretrained", "",
                          "--dataset", "cir-shapes", "--root", str(shapes_root)])
    assert "unknown method 'clip5cir'" in err and "clip4cir" in err and "sum" in err


def test_unknown_dataset_lists_valid_names(shapes_root, capsys):
    err = _error(capsys, ["eval", "--method", "sum", "--arch", "tiny-vit", "--pretrained", "",
                          "--dataset", "cir-shape", "--root", str(shapes_root)])
    assert "unknown dataset 'cir-shape'" in err and "cir-shapes" in err


def test_unknown_config_key_names_the_key(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("method: clip4cir\ntrain:\n  epoch: 3\n")
    err = _error(capsys, ["train", "--config", str(config)])
    assert "epoch" in err and "epochs" in err


def test_unknown_method_config_key_names_the_key(shapes_root, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"method: clip4cir\nmethod_config:\n  stag: combiner\nbackbone:\n  arch: tiny-vit\n"
                      f"  pretrained: null\ndataset:\n  root: {shapes_root}\noutput_dir: {tmp_path / 'run'}\n")
    err = _error(capsys, ["train", "--config", str(config)])
    assert "stag" in err and "stage" in err


def test_checkpoint_of_another_method_is_refused(shapes_root, tmp_path, capsys):
    save_model(build_method("sum", BackboneSpec("tiny-vit")), tmp_path / "sum-model")
    config = tmp_path / "run.yaml"
    config.write_text(f"method: clip4cir\nmethod_config:\n  stage: combiner\nbackbone:\n  arch: tiny-vit\n"
                      f"  pretrained: null\ninit_from: {tmp_path / 'sum-model'}\ndataset:\n  root: {shapes_root}\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    err = _error(capsys, ["train", "--config", str(config)])
    assert "holds a 'sum' model, not a 'clip4cir' model" in err


def test_missing_dataset_folder_names_the_path(tmp_path, capsys):
    err = _error(capsys, ["eval", "--method", "sum", "--arch", "tiny-vit", "--pretrained", "",
                          "--dataset", "cir-shapes", "--root", str(tmp_path / "nowhere")])
    assert "nowhere" in err and "opencir data synth" in err


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_image_names_the_file(shapes_root, tmp_path, capsys, damage):
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(shapes_root, root)
    victim = sorted((root / "images").iterdir())[0]
    if damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    err = _error(capsys, ["eval", "--method", "sum", "--arch", "tiny-vit", "--pretrained", "",
                          "--dataset", "cir-shapes", "--root", str(root), "--split", "test", "--device", "cpu",
                          "--cache-dir", str(tmp_path / "cache")])
    assert victim.name in err
    assert ("not found" if damage == "missing" else "cannot read image") in err
