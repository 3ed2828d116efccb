"""CLIP4Cir specifics: Combiner equations, stage rules, official checkpoint layouts."""
from __future__ import annotations

import pytest
import torch

from opencir.backbones import BackboneSpec
from opencir.methods.io import build_method


@pytest.fixture()
def combiner_model():
    torch.manual_seed(0)
    return build_method("clip4cir", BackboneSpec("tiny-vit"), {"stage": "combiner"}).eval()


def test_combiner_follows_the_spec_equations(combiner_model):
    c = combiner_model.combiner
    d = combiner_model.backbone.embed_dim
    assert c.text_projection_layer.out_features == 4 * d and c.combiner_layer.out_features == 8 * d
    image, text = torch.randn(3, d) * 5, torch.randn(3, d) * 5  # raw, unnormalised features
    t = torch.relu(c.text_projection_layer(text))
    i = torch.relu(c.image_projection_layer(image))
    z = torch.cat([t, i], dim=-1)  # text first
    lam = torch.sigmoid(c.dynamic_scalar[3](torch.relu(c.dynamic_scalar[0](z))))
    assert lam.shape == (3, 1)  # one scalar per sample
    expected = c.output_layer(torch.relu(c.combiner_layer(z))) + lam * text + (1 - lam) * image
    expected = expected / expected.norm(dim=-1, keepdim=True)
    out = combiner_model.compose({"pooled": image}, {"pooled": text})
    assert torch.allclose(out, expected, atol=1e-5)


def test_stage_rules_freeze_the_right_parameters():
    stage1 = build_method("clip4cir", BackboneSpec("tiny-vit"), {"stage": "finetune"})
    assert all(p.requires_grad for n, p in stage1.backbone.named_parameters() if "logit_scale" not in n)
    assert not stage1.backbone.model.logit_scale.requires_grad  # fixed scale 100 instead
    stage1.train()
    assert not stage1.backbone.training  # CLIP stays in eval() while fine-tuned
    stage2 = build_method("clip4cir", BackboneSpec("tiny-vit"), {"stage": "combiner"})
    assert not any(p.requires_grad for p in stage2.backbone.parameters())
    assert stage2.requirements.image_encoder_frozen and stage2.requirements.text_encoder_frozen
    text_only = build_method("clip4cir", BackboneSpec("tiny-vit"), {"stage": "finetune", "encoder": "text"})
    assert not any(p.requires_grad for p in text_only.backbone.model.visual.parameters())
    with pytest.raises(ValueError, match="stage must be one of"):
        build_method("clip4cir", BackboneSpec("tiny-vit"), {"stage": "both"})


def test_loss_uses_fixed_scale_100(combiner_model):
    d = combiner_model.backbone.embed_dim
    batch = {"reference": {"pooled": torch.randn(4, d)}, "text": {"pooled": torch.randn(4, d)},
             "target": {"pooled": torch.randn(4, d)}}
    q = combiner_model.compose(batch["reference"], batch["text"])
    t = torch.nn.functional.normalize(batch["target"]["pooled"], dim=-1)
    expected = torch.nn.functional.cross_entropy(100 * q @ t.t(), torch.arange(4))
    assert torch.allclose(combiner_model.loss(batch)["loss"], expected, atol=1e-5)


def test_official_checkpoint_layouts_load(tmp_path, combiner_model):
    torch.manual_seed(1)
    source = build_method("clip4cir", BackboneSpec("tiny-vit"), {"stage": "combiner"})
    stage1_file, combiner_file = tmp_path / "tuned_clip_best.pt", tmp_path / "combiner_arithmetic.pt"
    torch.save({"epoch": 3, "CLIP": source.backbone.model.state_dict()}, stage1_file)
    torch.save({"epoch": 7, "Combiner": {f"module.{k}": v for k, v in source.combiner.state_dict().items()}},
               combiner_file)
    assert combiner_model.load_official_checkpoint(stage1_file)["CLIP"]["unexpected"] == []
    assert combiner_model.load_official_checkpoint(combiner_file) == {"Combiner": "loaded"}
    d = source.backbone.embed_dim
    x, y = torch.randn(2, d), torch.randn(2, d)
    source.eval()
    assert torch.allclose(source.compose({"pooled": x}, {"pooled": y}), combiner_model.compose({"pooled": x}, {"pooled": y}))
    for a, b in zip(source.backbone.parameters(), combiner_model.backbone.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_of_another_method_is_refused(tmp_path, combiner_model):
    path = tmp_path / "tgcir.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="not a CLIP4Cir checkpoint.*'model'"):
        combiner_model.load_official_checkpoint(path)
    stage1 = build_method("clip4cir", BackboneSpec("tiny-vit"), {"stage": "finetune"})
    torch.save({"Combiner": combiner_model.combiner.state_dict()}, path)
    with pytest.raises(ValueError, match="stage=combiner"):
        stage1.load_official_checkpoint(path)
