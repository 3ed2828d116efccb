"""``opencir import-checkpoint``: a file in each method's official layout imports through
the CLI into a model directory (source SHA-256 recorded, official activation) that
``opencir eval`` evaluates, giving the same queries as the model the file was made from."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from opencir.backbones import BackboneSpec
from opencir.cli import main
from opencir.data import load_dataset
from opencir.methods.io import build_method, load_model
from opencir.methods.offset import OFFICIAL_PREFIXES as OFFSET_PREFIXES
from opencir.methods.tgcir import OFFICIAL_RENAMES as TGCIR_RENAMES

PIC2WORD_SMALL = {}
CONTEXT_SMALL = {"depth": 1, "heads": 2, "dim_head": 8, "middle_dim": 16}


def _source(name: str, config: dict | None = None, quick_gelu: bool = True):
    """The model an official file is made of: tiny-vit with the official activation."""
    torch.manual_seed(3)
    method = build_method(name, BackboneSpec("tiny-vit", quick_gelu=quick_gelu), config or {})
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return method.eval()


def _tgcir_official(method) -> dict[str, torch.Tensor]:
    """OpenCIR TG-CIR weights under the official VCG_CIR names (Q Conv1d heads)."""
    inverse = [(new, old) for old, new in TGCIR_RENAMES]
    state = {}
    for key, value in method.state_dict().items():
        if key.startswith("token_learner.attention."):
            continue
        new, old = next((n, o) for n, o in inverse if key.startswith(n))
        state[old + key[len(new):]] = value.clone()
    weight, bias = method.token_learner.attention.weight, method.token_learner.attention.bias
    for q in range(weight.shape[0]):
        state[f"backbone.tokenlearn.tokenizers.{q}.conv.0.weight"] = weight[q].reshape(1, -1, 1).clone()
        state[f"backbone.tokenlearn.tokenizers.{q}.conv.0.bias"] = bias[q].reshape(1).clone()
    return state


def _offset_official(method) -> dict[str, torch.Tensor]:
    """OpenCIR OFFSET weights under the official model_OFFSET names (1x1 conv kernels)."""
    inverse = {ours: theirs for theirs, ours in OFFSET_PREFIXES.items()}
    conv2d = ("backbone.cross_attention.", "backbone.seg_fusion.")
    state = {}
    for key, value in method.state_dict().items():
        if key.startswith("criterion."):
            continue
        prefix = next(p for p in sorted(inverse, key=len, reverse=True) if key.startswith(p) or key == p.rstrip("."))
        name = inverse[prefix] + key[len(prefix):]
        if name.endswith("weight") and value.dim() == 2 and name.startswith(conv2d):
            value = value[:, :, None, None]
        state[name] = value.clone()
    return state


def _write_official(name: str, method, folder: Path) -> list[Path]:
    """The released file(s) of ``name`` in the official layout."""
    if name == "clip4cir":
        clip, combiner = folder / "tuned_clip_best.pt", folder / "combiner_arithmetic.pt"
        torch.save({"epoch": 3, "CLIP": method.backbone.model.state_dict()}, clip)
        torch.save({"epoch": 7, "Combiner": {f"module.{k}": v for k, v in method.combiner.state_dict().items()}}, combiner)
        return [clip, combiner]
    path = folder / "best_model.pt"
    if name == "tg-cir":
        torch.save({f"module.{k}": v for k, v in _tgcir_official(method).items()}, path)
    elif name == "offset":
        torch.save(_offset_official(method), path)
    else:  # pic2word / context-i2w: epoch_N.pt with the mapping network and the frozen CLIP
        path = folder / "epoch_30.pt"
        torch.save({"epoch": 30, "name": name, "optimizer": None,
                    "state_dict": {f"module.{k}": v for k, v in method.backbone.model.state_dict().items()},
                    "state_dict_img2text": {f"module.{k}": v for k, v in method.img2text.state_dict().items()}}, path)
    return [path]


CASES = [
    ("clip4cir", {"stage": "combiner"}, True, []),
    ("tg-cir", {"global_tokens": 2, "local_tokens": 3}, True, ["--config", "global_tokens=2", "--config", "local_tokens=3"]),
    ("offset", {}, False, []),
    ("pic2word", PIC2WORD_SMALL, True, []),
    ("context-i2w", CONTEXT_SMALL, True, [a for k, v in CONTEXT_SMALL.items() for a in ("--config", f"{k}={v}")]),
]


@pytest.mark.parametrize("name,config,quick,extra", CASES, ids=[c[0] for c in CASES])
def test_official_file_imports_through_the_cli_and_evaluates(name, config, quick, extra, shapes_root, tmp_path, capsys):
    source = _source(name, config, quick_gelu=quick)
    files = _write_official(name, source, tmp_path)
    out = tmp_path / "imported"
    argv = ["import-checkpoint", "--method", name, *map(str, files), "--out", str(out), "--arch", "tiny-vit", *extra]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    record = json.loads((out / "config.json").read_text())
    assert record["method"] == name and record["imported"]["method"] == name
    for path, entry in zip(files, record["imported"]["sources"]):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["sha256"] == digest and entry["file"] == path.name and entry["bytes"] == path.stat().st_size
        assert f"{path.name}: sha256 {digest}" in printed
    # the official activation is recorded, so the directory rebuilds with it
    assert record["backbone"]["quick_gelu"] is quick and record["imported"]["quick_gelu"] is quick

    model = load_model(out)
    assert model.backbone.uses_quick_gelu is quick
    val = load_dataset("cir-shapes", shapes_root, "val")
    triplets, rng = val.triplets[:4], __import__("random").Random(0)
    pixels = torch.rand(4, 3, 32, 32)
    masks = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        texts = [source.query_text(val, t, False, rng) for t in triplets]
        expected = source.compose(source.encode_images(pixels, masks), source.encode_texts(texts))
        got = model.compose(model.encode_images(pixels, masks), model.encode_texts(texts))
    assert torch.allclose(got, expected, atol=1e-5)

    metrics_dir = tmp_path / "eval"
    assert main(["eval", "--model", str(out), "--dataset", "cir-shapes", "--root", str(shapes_root), "--split", "val",
                 "--device", "cpu", "--batch-size", "16", "--cache-dir", str(tmp_path / "cache"), "--out", str(metrics_dir)]) == 0
    metrics = json.loads((metrics_dir / "metrics.json").read_text())
    assert set(metrics) == {"R@1", "R@5", "R@10", "R@50"} and all(0 <= v <= 100 for v in metrics.values())


def test_wrong_activation_is_corrected_and_forced_mismatch_refused(tmp_path, capsys, caplog):
    source = _source("tg-cir", {"global_tokens": 2, "local_tokens": 3})
    [path] = _write_official("tg-cir", source, tmp_path)
    # Python API on a GELU backbone (quick_gelu unset): corrected with a warning
    gelu = build_method("tg-cir", BackboneSpec("tiny-vit"), {"global_tokens": 2, "local_tokens": 3})
    assert not gelu.backbone.uses_quick_gelu
    with caplog.at_level("WARNING"):
        gelu.load_official_checkpoint(path)
    assert gelu.backbone.uses_quick_gelu and gelu.backbone.spec.quick_gelu is True
    assert "need QuickGELU" in caplog.text
    # a backbone forced to GELU is refused with one line naming the fix
    forced = build_method("tg-cir", BackboneSpec("tiny-vit", quick_gelu=False), {"global_tokens": 2, "local_tokens": 3})
    with pytest.raises(ValueError, match="trained with QuickGELU .*quick_gelu=true"):
        forced.load_official_checkpoint(path)


def test_cli_errors_are_one_line(tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        return err

    assert "not found" in error(["import-checkpoint", "--method", "tg-cir", str(tmp_path / "missing.pt"),
                                 "--out", str(tmp_path / "o"), "--arch", "tiny-vit"])
    assert "no released official checkpoints" in error(["import-checkpoint", "--method", "sum", str(tmp_path),
                                                        "--out", str(tmp_path / "o"), "--arch", "tiny-vit"])
    torch.save({"CLIP": {"a": torch.zeros(1)}}, tmp_path / "clip4cir.pt")
    assert "CLIP4Cir checkpoint" in error(["import-checkpoint", "--method", "tg-cir", str(tmp_path / "clip4cir.pt"),
                                           "--out", str(tmp_path / "o"), "--arch", "tiny-vit"])
    source = _source("pic2word")
    torch.save({"state_dict_img2text": source.img2text.state_dict()}, tmp_path / "mapping_only.pt")
    assert "--pretrained" in error(["import-checkpoint", "--method", "pic2word", str(tmp_path / "mapping_only.pt"),
                                    "--out", str(tmp_path / "o"), "--arch", "tiny-vit"])
    (tmp_path / "exists").mkdir()
    assert "--overwrite" in error(["import-checkpoint", "--method", "pic2word", str(tmp_path / "mapping_only.pt"),
                                   "--out", str(tmp_path / "exists"), "--arch", "tiny-vit"])


def test_imported_directory_indexes_and_searches(tmp_path, capsys):
    source = _source("tg-cir", {"global_tokens": 2, "local_tokens": 3})
    [path] = _write_official("tg-cir", source, tmp_path)
    model = tmp_path / "model"
    assert main(["import-checkpoint", "--method", "tg-cir", str(path), "--out", str(model), "--arch", "tiny-vit",
                 "--config", "global_tokens=2", "--config", "local_tokens=3"]) == 0
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(6):
        Image.new("RGB", (32, 32), (40 * i, 255 - 40 * i, 90)).save(images / f"img{i}.png")
    capsys.readouterr()
    assert main(["index", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "idx"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--ref-id", "img2", "--text", "make it red", "-k", "3",
                 "--json", "--device", "cpu"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3 and "img2" not in [h["image_id"] for h in hits]
