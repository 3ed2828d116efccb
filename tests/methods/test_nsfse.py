"""The reconstructed NSFSE composer ([INFERRED]) and the ``loss:`` option of trainable methods."""
from __future__ import annotations

import json

import pytest

from opencir.recipes import recipe_path
import torch

from opencir.backbones import BackboneSpec, ClipBackbone
from opencir.data import load_dataset
from opencir.losses import InfoNCE, NegativeSensitiveLoss
from opencir.methods.base import in_batch_cross_entropy
from opencir.methods.io import build_method, load_model, save_model
from opencir.methods.nsfse import Nsfse, NsfseConfig, project_words
from opencir.training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig
from opencir.training.trainer import Trainer

TEXTS = ["make the circle red", "add a small blue square", "remove it", "move the large yellow cross to the left"]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ClipBackbone(BackboneSpec("tiny-vit"))


def _batch(method, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        reference = method.encode_images(torch.randn(4, 3, 32, 32, generator=g))
        target = method.encode_images(torch.randn(4, 3, 32, 32, generator=g))
        text = method.encode_texts(TEXTS)
    return {"reference": reference, "text": text, "target": target}


def test_features_shapes_and_word_mask(backbone):
    method = build_method("nsfse", backbone, {"region_grid": 2, "max_words": 8})
    batch = _batch(method)
    d = backbone.embed_dim
    assert batch["reference"]["pooled"].shape == (4, d)
    assert batch["reference"]["regions"].shape == (4, 4, d)  # 4x4 patches pooled to 2x2
    assert batch["text"]["words"].shape == (4, 8, d)
    ids = backbone.tokenize(TEXTS)
    eot = ids.argmax(-1).clamp(max=7)
    # mask = positions 1..EOT (SOT and padding out), clipped to max_words
    assert batch["text"]["mask"].sum(1).tolist() == eot.tolist()
    assert not batch["text"]["mask"][:, 0].any()
    full = project_words(backbone, ids, 77)
    assert torch.allclose(full["pooled"], backbone.encode_text(ids), atol=1e-5)


def test_forward_backward_only_composer_trains(backbone):
    torch.manual_seed(0)
    method = build_method("nsfse", backbone)
    assert isinstance(method.criterion, NegativeSensitiveLoss)
    method.train()
    losses = method.loss(_batch(method))
    assert {"loss", "infonce", "boundary_pos", "boundary_neg", "threshold", "scale"} <= set(losses)
    losses["loss"].backward()
    trained = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trained and not any(n.startswith("backbone.") for n in trained)
    assert method.scale.grad is not None and method.composer.gate[0].weight.grad.abs().sum() > 0
    query = method.compose(_batch(method)["reference"], _batch(method)["text"])
    assert query.shape == (4, backbone.embed_dim)
    assert torch.allclose(query.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_enhancement_path_is_live_after_one_step(backbone):
    """sentence_out starts at zero; one optimiser step must make the word branch change the query."""
    torch.manual_seed(0)
    method = build_method("nsfse", backbone, {"loss": "infonce", "dropout": 0.0})
    batch = _batch(method)
    method.train()
    optimizer = torch.optim.Adam([p for _, p in method.trainable_parameters()], lr=1e-2)
    method.loss(batch)["loss"].backward()
    optimizer.step()
    method.eval()
    with torch.no_grad():
        base = method.compose(batch["reference"], batch["text"])
        other_regions = {**batch["reference"], "regions": batch["reference"]["regions"].flip(0)}
        changed = method.compose(other_regions, batch["text"])
    assert not torch.allclose(base, changed, atol=1e-6)  # regions reach the query through the words


def test_infonce_option_equals_plain_cross_entropy(backbone):
    method = build_method("nsfse", backbone, {"loss": "infonce", "dropout": 0.0})
    assert isinstance(method.criterion, InfoNCE)
    method.eval()
    batch = _batch(method)
    query = method.compose(batch["reference"], batch["text"])
    target = method.embed_targets(batch["target"])
    assert method.loss(batch)["loss"].item() == pytest.approx(in_batch_cross_entropy(query, target, 10.0).item(), abs=1e-5)


def test_save_load_round_trip_keeps_ema_state(backbone, tmp_path):
    torch.manual_seed(0)
    method = build_method("nsfse", backbone, {"loss_options": {"ema_momentum": 0.8}})
    method.train()
    for seed in range(3):
        method.loss(_batch(method, seed))
    moments = method.criterion.running_moments.clone()
    assert int(method.criterion.num_updates) == 3
    save_model(method, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["method_config"]["loss"] == "nsfse"
    loaded = load_model(tmp_path / "m", expected_method="nsfse")
    assert isinstance(loaded, Nsfse)
    assert torch.equal(loaded.criterion.running_moments, moments)
    assert int(loaded.criterion.num_updates) == 3
    method.eval()
    batch = _batch(method)
    with torch.no_grad():
        assert torch.allclose(method.compose(batch["reference"], batch["text"]),
                              loaded.compose(batch["reference"], batch["text"]), atol=1e-6)


def test_config_errors_and_resnet_refused():
    with pytest.raises(KeyError, match="unknown loss_options"):
        NsfseConfig.from_dict({"loss_options": {"gamma": 1}})
    with pytest.raises(KeyError, match="unknown loss"):
        NsfseConfig.from_dict({"loss": "triplet"})
    with pytest.raises(ValueError, match="region_grid"):
        NsfseConfig(region_grid=0)
    with pytest.raises(ValueError, match="not a ViT"):
        build_method("nsfse", BackboneSpec("tiny-rn"))


def test_clip4cir_combiner_with_nsfse_loss_and_old_configs(backbone, tmp_path):
    torch.manual_seed(0)
    old = build_method("clip4cir", backbone, {"stage": "combiner", "dropout": 0.5})  # a config without `loss`
    assert isinstance(old.criterion, InfoNCE) and old.config.loss == "infonce"
    assert not any(k.startswith("criterion.") for k in old.state_dict())
    method = build_method("clip4cir", backbone, {"stage": "combiner", "loss": "nsfse"})
    method.train()
    batch = {k: {"pooled": v["pooled"]} for k, v in _batch(method).items()}
    losses = method.loss(batch)
    assert {"loss", "contrastive", "threshold"} <= set(losses)
    losses["loss"].backward()
    assert method.combiner.output_layer.weight.grad is not None
    save_model(method, tmp_path / "c")
    assert int(load_model(tmp_path / "c").criterion.num_updates) == 1


def test_trains_and_evaluates_on_cir_shapes(shapes_root, tmp_path):
    torch.manual_seed(0)
    method = build_method("nsfse", BackboneSpec("tiny-vit"), {"hidden_dim": 32})
    config = RunConfig(
        method="nsfse", backbone=BackboneConfig(arch="tiny-vit", pretrained=None),
        dataset=DatasetConfig(name="cir-shapes", root=str(shapes_root)),
        train=TrainConfig(epochs=2, batch_size=16, lr=1e-3, seed=0, amp=False, eval_batch_size=64),
        output_dir=str(tmp_path / "run"), device="cpu", cache_dir=str(tmp_path / "cache"))
    train = load_dataset("cir-shapes", shapes_root, "train")
    val = load_dataset("cir-shapes", shapes_root, "val")
    summary = Trainer(method, config, train, val).fit(resume=False)
    assert summary["epochs_run"] == 2 and "R@1" in summary["best_metrics"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("train/threshold" in r and "train/boundary_neg" in r for r in records)
    best = load_model(tmp_path / "run" / "best", expected_method="nsfse")
    assert int(best.criterion.num_updates) > 0  # the EMA state travels with the checkpoint


@pytest.mark.parametrize("benchmark", ["fashioniq", "cirr", "fashion200k", "cirshapes"])
def test_recipes_load(benchmark):
    from pathlib import Path

    from opencir.training.config import load_run_config

    recipe = recipe_path(f"nsfse-{benchmark}")
    config = load_run_config(recipe)
    assert config.method == "nsfse"
    method_config = NsfseConfig.from_dict(config.method_config)
    assert method_config.loss == "nsfse" and method_config.loss_options["ema_momentum"] == 0.9
