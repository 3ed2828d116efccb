"""Weight hashes verified on load (a damaged file names itself) and lean checkpoints for
frozen backbones (same outputs as a full save, the backbone stored once)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import opencir
from opencir.methods.io import BACKBONE_STORE, load_model, save_model


@pytest.fixture()
def combiner():
    torch.manual_seed(0)
    return opencir.create_model("clip4cir", "tiny-vit", {"stage": "combiner"})


def _probe(model) -> torch.Tensor:
    pixels = torch.randn(3, 3, model.backbone.image_size, model.backbone.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.compose(model.encode_images(pixels), model.encode_texts(["a", "bb cc", "make it red"]))


def _flip_byte(path, offset_from_end=100):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_save_records_size_and_sha256(combiner, tmp_path):
    import hashlib

    directory = save_model(combiner, tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    weights = (directory / "model.safetensors").read_bytes()
    assert config["files"]["model.safetensors"] == {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
    assert config["files"]["model.safetensors"]["sha256"] in (directory / "README.md").read_text()


def test_a_flipped_bit_in_the_weights_is_refused_naming_the_file(combiner, tmp_path):
    directory = save_model(combiner, tmp_path / "m")
    _flip_byte(directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"weight file .*m/model.safetensors is damaged: SHA-256"):
        load_model(directory)
    load_model(directory, verify=False)  # still a valid safetensors file: without the hash it would load silently


def test_a_truncated_weight_file_is_refused(combiner, tmp_path):
    directory = save_model(combiner, tmp_path / "m")
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"model.safetensors is damaged: \d+ bytes, \d+ recorded"):
        load_model(directory)


def test_the_cli_says_it_in_one_line(combiner, tmp_path, capsys, gallery_folder):
    from opencir.cli import main

    directory = save_model(combiner, tmp_path / "m")
    _flip_byte(directory / "model.safetensors")
    code = main(["encode", "--model", str(directory), "--images", str(gallery_folder), "--out", str(tmp_path / "v.npy")])
    err = capsys.readouterr().err
    assert code == 2 and "model.safetensors is damaged" in err and err.strip().count("\n") == 0


def test_lean_save_gives_the_same_model_and_stores_the_backbone_once(combiner, tmp_path):
    full = save_model(combiner, tmp_path / "full")
    lean = save_model(combiner, tmp_path / "run" / "best", backbone_store=tmp_path / "run")
    again = save_model(combiner, tmp_path / "run" / "last", backbone_store=tmp_path / "run")
    config = json.loads((lean / "config.json").read_text())
    assert config["format_version"] == 2 and config["backbone_weights"]["path"].startswith(f"../{BACKBONE_STORE}/")
    stored = list((tmp_path / "run" / BACKBONE_STORE).glob("*.safetensors"))
    assert len(stored) == 1 and json.loads((again / "config.json").read_text())["backbone_weights"] == config["backbone_weights"]
    assert (lean / "model.safetensors").stat().st_size < (full / "model.safetensors").stat().st_size / 5
    expected = _probe(combiner)
    assert torch.equal(_probe(load_model(full)), expected)
    assert torch.equal(_probe(load_model(lean)), expected)
    # a moved run directory keeps working (the reference is relative)
    shutil.move(tmp_path / "run", tmp_path / "moved")
    assert torch.equal(_probe(load_model(tmp_path / "moved" / "best")), expected)


def test_lean_checkpoint_backbone_damage_and_loss_are_named(combiner, tmp_path):
    lean = save_model(combiner, tmp_path / "run" / "best", backbone_store=tmp_path / "run")
    (backbone,) = (tmp_path / "run" / BACKBONE_STORE).glob("*.safetensors")
    _flip_byte(backbone)
    with pytest.raises(ValueError, match=r"backbone weight file .*\.safetensors is damaged"):
        load_model(lean)
    backbone.unlink()
    with pytest.raises(FileNotFoundError, match="lean checkpoint whose frozen backbone .* is missing.*save_pretrained"):
        load_model(lean)


def test_trainable_backbone_is_always_saved_in_full(tmp_path):
    model = opencir.create_model("clip4cir", "tiny-vit", {"stage": "finetune"}).train()
    directory = save_model(model, tmp_path / "run" / "best", backbone_store=tmp_path / "run")
    assert "backbone_weights" not in json.loads((directory / "config.json").read_text())
    assert not (tmp_path / "run" / BACKBONE_STORE).exists()


def test_backbone_fingerprint_is_memoised_and_follows_weight_changes(combiner):
    backbone = combiner.backbone
    first = backbone.fingerprint()
    calls = {"n": 0}
    original = torch.Tensor.numpy

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    torch.Tensor.numpy = counting
    try:
        assert backbone.fingerprint() == first and calls["n"] == 0  # memoised: nothing hashed again
    finally:
        torch.Tensor.numpy = original
    weight = backbone.model.ln_final.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1e-3)  # an in-place update, like an optimizer step
    assert backbone.fingerprint() != first
    with torch.no_grad():
        weight.copy_(saved)  # the same values again: the same fingerprint, recomputed
    assert backbone.fingerprint() == first


def test_trainer_writes_lean_best_and_last_with_a_card(trained_run):
    for name in ("best", "last"):
        config = json.loads((trained_run / name / "config.json").read_text())
        assert config["backbone_weights"]["path"] == f"../{BACKBONE_STORE}/{config['backbone_fingerprint']}.safetensors"
        card = config["card"]
        assert card["dataset"] == "cir-shapes" and card["split"] == "val" and card["training_seconds"] > 0
        assert "R@1" in card["metrics"] and card["training_config"]["method_config"]["stage"] == "combiner"
        readme = (trained_run / name / "README.md").read_text()
        assert "R@1" in readme
        root = card["training_config"]["dataset"]["root"]  # a card is published: no local paths in it
        assert "/" not in root and root and str(trained_run.parent.parent) not in readme
    assert len(list((trained_run / BACKBONE_STORE).glob("*.safetensors"))) == 1
    model = load_model(trained_run / "best")
    assert model.encode_gallery([]).shape == (0, model.backbone.embed_dim)


def test_directories_saved_before_hashes_existed_still_load(combiner, tmp_path):
    directory = save_model(combiner, tmp_path / "old")
    config = json.loads((directory / "config.json").read_text())
    del config["files"]
    config["format_version"] = 1
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "README.md").unlink()
    assert torch.equal(_probe(load_model(directory)), _probe(combiner))


def test_card_config_keeps_only_the_last_components_of_local_paths():
    from opencir.training.card import without_local_paths

    training = {"dataset": {"name": "cirr", "root": "/home/me/data/cirr"}, "init_from": "/home/me/runs/stage1/best",
                "backbone": {"arch": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}, "train": {"lr": 1e-4}}
    public = without_local_paths(training)
    assert public == {"dataset": {"name": "cirr", "root": "cirr"}, "init_from": "stage1/best",
                      "backbone": {"arch": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}, "train": {"lr": 1e-4}}
    assert training["dataset"]["root"] == "/home/me/data/cirr"  # the run's own config is untouched
    hub = without_local_paths({"backbone": {"arch": "hf-hub:org/name", "pretrained": "hf-hub:org/name"}})
    assert hub["backbone"]["pretrained"] == "hf-hub:org/name"
    assert without_local_paths({"init_from": "/best", "dataset": {"root": "C:\\data\\cirr"}}) == \
        {"init_from": "best", "dataset": {"root": "cirr"}}
