"""Exported gallery and query towers (ONNX through onnxruntime, TorchScript) give the
vectors of ``encode_gallery`` / ``encode_queries`` on real images and texts."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import opencir
from opencir.export import export_model
from opencir.methods.io import load_model


@pytest.fixture(scope="module")
def model(trained_run):
    return load_model(trained_run / "best")


def _inputs(model, gallery_folder):
    paths = sorted(gallery_folder.glob("*.png"))[:5]
    texts = ["make the circle red", "remove the big square", "x", "add a green cross on the left", "move it"]
    pixels = np.stack([model.preprocess(Image.open(p).convert("RGB")).numpy() for p in paths])
    return paths, texts, pixels, model.backbone.tokenize(texts).numpy()


def test_onnx_towers_give_the_models_vectors(model, gallery_folder, tmp_path):
    import onnxruntime

    manifest = export_model(model, tmp_path / "onnx", "onnx")
    assert set(manifest["towers"]) == {"gallery", "query"}
    assert json.loads((tmp_path / "onnx" / "export.json").read_text()) == manifest
    assert manifest["preprocess"]["transform"] == "targetpad"
    paths, texts, pixels, tokens = _inputs(model, gallery_folder)
    gallery = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "gallery.onnx"))
    query = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "query.onnx"))
    np.testing.assert_allclose(gallery.run(None, {"pixels": pixels})[0], model.encode_gallery(paths), atol=1e-5)
    np.testing.assert_allclose(query.run(None, {"pixels": pixels, "token_ids": tokens})[0],
                               model.encode_queries(paths, texts), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_towers_give_the_models_vectors(model, gallery_folder, tmp_path):
    import torch

    manifest = export_model(model, tmp_path / "ts", "torchscript")
    paths, texts, pixels, tokens = _inputs(model, gallery_folder)
    gallery = torch.jit.load(str(tmp_path / "ts" / manifest["towers"]["gallery"]["file"]))
    query = torch.jit.load(str(tmp_path / "ts" / manifest["towers"]["query"]["file"]))
    with torch.no_grad():
        g = gallery(torch.from_numpy(pixels)).numpy()
        q = query(torch.from_numpy(pixels), torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(g, model.encode_gallery(paths), atol=1e-5)
    np.testing.assert_allclose(q, model.encode_queries(paths, texts), atol=1e-5)


def test_prompt_methods_export_their_gallery_tower_only(tmp_path):
    pic2word = opencir.create_model("pic2word", "tiny-vit")
    manifest = export_model(pic2word, tmp_path / "p2w", "torchscript")
    assert set(manifest["towers"]) == {"gallery"} and "pseudo words" in manifest["skipped"]["query"]
    with pytest.raises(ValueError, match="only its gallery tower can be exported"):
        export_model(pic2word, tmp_path / "p2w-q", "torchscript", towers=("query",))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_export_command(trained_run, tmp_path, capsys):
    from opencir.cli import main

    assert main(["export", "--model", str(trained_run / "best"), "--out", str(tmp_path / "x"), "--format",
                 "torchscript", "--tower", "gallery"]) == 0
    assert set(json.loads(capsys.readouterr().out)["towers"]) == {"gallery"}
    assert (tmp_path / "x" / "gallery.pt").is_file()
