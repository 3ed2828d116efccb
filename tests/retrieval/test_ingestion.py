"""A catalogue with bad files indexes in one run, with a report; preconditions before encoding."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from opencir.cli import main
from opencir.methods import load_model
from opencir.retrieval.catalogue import read_catalogue
from opencir.retrieval.indexing import REPORT_FILE, index_catalogue
from opencir.retrieval.store import IndexStore


def bad_catalogue(folder, make_images):
    """8 good images plus one of each kind of bad file."""
    make_images(folder, 8)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    good = (folder / "img000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "loop_a.png").symlink_to(folder / "loop_b.png")
    (folder / "loop_b.png").symlink_to(folder / "loop_a.png")
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    (folder / "locked.png").write_bytes(good)
    os.chmod(folder / "locked.png", 0)
    return {"empty": "empty", "text": "not_an_image", "truncated": "corrupt", "loop_a": "symlink_loop",
            "loop_b": "symlink_loop", "dangling": "broken_symlink", "locked": "unreadable"}


def test_a_catalogue_with_bad_files_indexes_in_one_run_with_a_report(tmp_path, make_images, model_dir, capsys):
    folder = tmp_path / "images"
    expected = bad_catalogue(folder, make_images)
    if os.geteuid() == 0:  # root reads a chmod-0 file anyway
        os.chmod(folder / "locked.png", 0o644)
        expected.pop("locked")
    out = tmp_path / "idx"
    assert main(["index", "--model", str(model_dir), "--images", str(folder), "--out", str(out),
                 "--shard-size", "4", "--batch-size", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    good = 8 + (0 if "locked" in expected else 1)
    assert summary["added"] == good and summary["skipped"] == len(expected)
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["skipped_count"] == len(expected) and report["on_error"] == "skip"
    found = {os.path.splitext(os.path.basename(item["path"]))[0]: item["reason"] for item in report["skipped"]}
    assert found == expected
    assert all(item["message"] and str(folder) in item["message"] for item in report["skipped"])
    with IndexStore.open(out) as store:
        assert len(store) == good and "empty" not in store and "img007" in store
    # a second run does not retry forever nor fail: nothing new, the report says what is still bad
    assert main(["index", "--model", str(model_dir), "--images", str(folder), "--out", str(out)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["added"] == 0 and again["skipped"] == len(expected)


def test_on_error_fail_stops_at_the_first_bad_file_naming_it(tmp_path, make_images, model_dir, capsys):
    folder = tmp_path / "images"
    make_images(folder, 3)
    (folder / "img001.png").write_bytes(b"garbage")
    assert main(["index", "--model", str(model_dir), "--images", str(folder), "--out", str(tmp_path / "idx"),
                 "--on-error", "fail"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "img001.png" in err[0] and "not an image" in err[0] and "--on-error skip" in err[0]
    assert "Traceback" not in "\n".join(err)


def test_skipped_images_survive_a_resume(tmp_path, make_images, model_dir):
    folder = tmp_path / "images"
    make_images(folder, 6)
    (folder / "img002.png").write_bytes(b"")
    method = load_model(model_dir)

    def kill(shard):
        if shard == 0:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        index_catalogue(method, read_catalogue(folder), tmp_path / "idx", shard_size=3, on_shard=kill)
    report = index_catalogue(method, read_catalogue(folder), tmp_path / "idx", shard_size=3)
    assert report.reused_shards == 1 and report.added == 5
    assert [(s.image_id, s.reason) for s in report.skipped] == [("img002", "empty")]


def test_a_csv_with_missing_files_skips_them(tmp_path, make_images, model_dir):
    make_images(tmp_path / "imgs", 2)
    (tmp_path / "manifest.csv").write_text("path,id\nimgs/img000.png,a\nimgs/nope.png,b\nimgs/img001.png,c\n")
    report = index_catalogue(load_model(model_dir), read_catalogue(tmp_path / "manifest.csv"), tmp_path / "idx")
    assert report.added == 2 and [(s.image_id, s.reason) for s in report.skipped] == [("b", "missing")]
    assert "manifest.csv:3: image not found" in report.skipped[0].message


def test_nothing_readable_is_a_clear_error_with_the_report(tmp_path, model_dir):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"none of the 1 catalogue images could be read; see .*ingest-report.json"):
        index_catalogue(load_model(model_dir), read_catalogue(folder), tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / REPORT_FILE).read_text())["skipped"][0]["reason"] == "empty"


def test_factory_preconditions_are_checked_before_encoding(tmp_path, make_images, model_dir):
    folder = tmp_path / "images"
    make_images(folder, 5)
    method = load_model(model_dir)
    calls = []
    original = method.encode_images
    method.encode_images = lambda pixels, masks=None: (calls.append(pixels.shape[0]), original(pixels, masks))[1]
    with pytest.raises(ValueError, match=r"'IVF16,Flat' needs at least 16 vectors to train its 16 lists, the first commit has 5"):
        index_catalogue(method, read_catalogue(folder), tmp_path / "idx", backend="faiss",
                        backend_options={"factory": "IVF16,Flat"})
    assert calls == [1]  # one blank probe image for the vector size; no catalogue image was encoded
    with pytest.raises(ValueError, match="invalid FAISS factory string 'PQ7'"):
        index_catalogue(method, read_catalogue(folder), tmp_path / "idx2", backend="faiss",
                        backend_options={"factory": "PQ7"})
    with pytest.raises(ValueError, match=r"unknown faiss backend options \['nprobes'\]"):
        index_catalogue(method, read_catalogue(folder), tmp_path / "idx3", backend="faiss",
                        backend_options={"nprobes": 3})
    assert calls == [1, 1]


def test_every_reader_decodes_the_same_pixels(tmp_path, model_dir):
    """A 16-bit grey PNG is indexed as grey, not white: indexing uses the shared decoder."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((32, 32), 32896, dtype=np.uint16)).save(folder / "grey16.png")
    Image.new("RGB", (32, 32), (128, 128, 128)).save(folder / "grey8.png")
    Image.new("RGB", (32, 32), (255, 255, 255)).save(folder / "white.png")
    index_catalogue(load_model(model_dir), read_catalogue(folder), tmp_path / "idx")
    with IndexStore.open(tmp_path / "idx") as store:
        grey16, grey8, white = store.vectors(["grey16", "grey8", "white"])
    np.testing.assert_allclose(grey16, grey8, atol=1e-6)
    assert np.abs(grey16 - white).max() > 1e-3
