"""Backbone names: ARCH/TAG notation and open_clip ``hf-hub:`` models read from a Hub cache."""
from __future__ import annotations

import json

import pytest
import torch

from opencir.backbones import BackboneSpec, ClipBackbone
from opencir.backbones.clip import CONFIG_DIR, parse_backbone_name


@pytest.mark.parametrize("name, expected", [
    ("ViT-B-16/openai", ("ViT-B-16", "openai")),
    ("ViT-H-14/laion2b_s32b_b79k", ("ViT-H-14", "laion2b_s32b_b79k")),
    ("RN50x4", ("RN50x4", None)),
    ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None)),
])
def test_parse_backbone_name(name, expected):
    assert parse_backbone_name(name) == expected


@pytest.mark.parametrize("bad", ["", "ViT-B-16/", "/openai", "a/b/c", "hf-hub:org", "hf-hub:org/"])
def test_malformed_names_are_refused_with_the_fix(bad):
    with pytest.raises(ValueError, match="ARCH/TAG|hf-hub:ORG/NAME|non-empty"):
        BackboneSpec(bad)


def test_arch_tag_spec_equals_the_two_field_spec():
    assert BackboneSpec("ViT-B-16/openai") == BackboneSpec("ViT-B-16", "openai")
    assert BackboneSpec("ViT-B-16/openai", pretrained="openai") == BackboneSpec("ViT-B-16", "openai")
    assert BackboneSpec("hf-hub:org/name", pretrained="openai").pretrained is None  # the repo has its weights


def test_hf_hub_open_clip_model_loads_offline_from_the_cache(tmp_path, monkeypatch, hub_cache_writer):
    """A real open_clip Hub repo (open_clip_config.json + open_clip_model.safetensors), laid out
    in a Hub cache, is built by open_clip through huggingface_hub with the network off."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    reference = ClipBackbone(BackboneSpec("tiny-vit"))
    repo = tmp_path / "repo"
    repo.mkdir()
    cfg = json.loads((CONFIG_DIR / "tiny-vit.json").read_text())
    (repo / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "mean": list(reference.image_mean), "std": list(reference.image_std)}}))
    save_file({k: v.contiguous() for k, v in reference.model.state_dict().items()}, str(repo / "open_clip_model.safetensors"))
    cache = tmp_path / "hub"
    hub_cache_writer(repo, "test-org/tiny-clip", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    backbone = ClipBackbone(BackboneSpec("hf-hub:test-org/tiny-clip", cache_dir=str(cache)))
    pixels = torch.randn(2, 3, reference.image_size, reference.image_size)
    with torch.no_grad():
        assert torch.allclose(backbone.encode_image(pixels), reference.encode_image(pixels), atol=1e-6)
    tokens = backbone.tokenize(["a red circle"])
    assert torch.equal(tokens, reference.tokenize(["a red circle"]))
    assert backbone.fingerprint() != reference.fingerprint()  # the arch name is part of the fingerprint
