"""``opencir encode``: gallery and query vectors to .npy / .parquet from the shell."""
from __future__ import annotations

import json

import numpy as np
import pytest

from opencir.cli import main
from opencir.methods.io import load_model
from opencir.retrieval.catalogue import read_catalogue


@pytest.fixture(scope="module")
def queries_file(gallery_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("queries")
    paths = sorted(gallery_folder.glob("*.png"))
    rows = [{"query_id": "q1", "image": str(paths[0]), "text": "make it red"},
            {"query_id": "q2", "ref_id": paths[1].stem, "text": "remove the square"},
            {"image": str(paths[2]), "text": "add a cross"}]
    path = folder / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_gallery_to_parquet(trained_run, gallery_folder, tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "gallery.parquet"
    assert main(["encode", "--model", str(trained_run / "best"), "--images", str(gallery_folder), "--out", str(out),
                 "--device", "cpu", "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "gallery"  # stdout is pure JSON
    table = pq.read_table(out)
    catalogue = read_catalogue(gallery_folder)
    assert table.column("image_id").to_pylist() == [e.image_id for e in catalogue.entries]
    vectors = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    model = load_model(trained_run / "best")
    np.testing.assert_allclose(vectors, model.encode_gallery([e.path for e in catalogue.entries]), atol=1e-6)
    assert json.loads(table.schema.metadata[b"opencir"])["method"] == "clip4cir"


def test_queries_to_npy(trained_run, gallery_folder, queries_file, tmp_path, capsys):
    out = tmp_path / "q.npy"
    assert main(["encode", "--model", str(trained_run / "best"), "--queries", str(queries_file), "--images",
                 str(gallery_folder), "--out", str(out), "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 3
    sidecar = json.loads((tmp_path / "q.ids.json").read_text())
    assert sidecar["query_id"] == ["q1", "q2", "3"] and sidecar["kind"] == "queries"
    paths = sorted(gallery_folder.glob("*.png"))
    model = load_model(trained_run / "best")
    expected = model.encode_queries(paths[:3], ["make it red", "remove the square", "add a cross"])
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


@pytest.mark.parametrize("line, message", [
    ('{"image": "nope.png", "text": "x"}', "q.jsonl:1: image not found"),
    ('{"ref_id": "unknown", "text": "x"}', "query 1: ref_id 'unknown' is not in the --images catalogue"),
    ('{"ref_id": "a"}', "q.jsonl:1"),
    ("not json", "q.jsonl:1: not a JSON object"),
])
def test_bad_queries_fail_in_one_line(trained_run, gallery_folder, tmp_path, capsys, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text(line + "\n")
    code = main(["encode", "--model", str(trained_run / "best"), "--queries", str(path), "--images",
                 str(gallery_folder), "--out", str(tmp_path / "o.npy")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o.npy").exists()


def test_unknown_output_format_is_refused(trained_run, gallery_folder, tmp_path, capsys):
    code = main(["encode", "--model", str(trained_run / "best"), "--images", str(gallery_folder), "--out",
                 str(tmp_path / "v.csv")])
    assert code == 2 and "choose a .npy or .parquet" in capsys.readouterr().err


def test_index_and_encode_at_their_default_precision_agree(trained_run, gallery_folder, tmp_path, capsys):
    """The shell flow: `opencir index` then `opencir encode`, both with their defaults
    (precision auto: bf16 on CPUs with native bf16), give the same gallery vectors."""
    from opencir.retrieval.store import IndexStore

    index = tmp_path / "cli.idx"
    assert main(["index", "--model", str(trained_run / "best"), "--images", str(gallery_folder), "--out", str(index),
                 "--device", "cpu"]) == 0
    out = tmp_path / "v.npy"
    assert main(["encode", "--model", str(trained_run / "best"), "--images", str(gallery_folder), "--out", str(out),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    ids = json.loads((tmp_path / "v.ids.json").read_text())["image_id"]
    with IndexStore.open(index) as store:
        np.testing.assert_allclose(np.load(out), store.vectors(ids), rtol=0, atol=1e-6)


def test_weighted_and_negative_queries_combine_like_search(trained_run, gallery_folder, tmp_path, capsys):
    """A query with two weighted texts is the normalised weighted sum of its composed pairs."""
    paths = sorted(gallery_folder.glob("*.png"))
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"query_id": "w", "image": str(paths[0]),
                                "texts": ["make it red", {"text": "bigger", "weight": 3}]}) + "\n")
    out = tmp_path / "w.npy"
    assert main(["encode", "--model", str(trained_run / "best"), "--queries", str(path), "--out", str(out),
                 "--precision", "fp32"]) == 0
    capsys.readouterr()
    model = load_model(trained_run / "best")
    pairs = model.encode_queries([paths[0], paths[0]], ["make it red", "bigger"])
    expected = 0.25 * pairs[0] + 0.75 * pairs[1]
    np.testing.assert_allclose(np.load(out)[0], expected / np.linalg.norm(expected), atol=1e-6)
