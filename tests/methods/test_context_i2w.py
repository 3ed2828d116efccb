"""Context-I2W: the <|replace|> token, the mapping network, contexts, gradients, weights."""
from __future__ import annotations

import math

import pytest
import torch

from opencir.backbones import BackboneSpec
from opencir.methods.io import build_method, load_model, save_model
from opencir.methods.pseudo_word import REPLACE_TOKEN

SMALL = {"depth": 1, "heads": 2, "dim_head": 8, "middle_dim": 16}
OFFICIAL_KEYS_DEPTH_1 = {
    "to_c.weight", "W_R.weight_g", "W_R.weight_v", "ln_post.weight", "ln_post.bias", "ln_post_local.weight",
    "ln_post_local.bias", "proj", "proj_local", "VT_Extractor.latents",
    "VT_Extractor.layers.0.0.norm_media.weight", "VT_Extractor.layers.0.0.norm_media.bias",
    "VT_Extractor.layers.0.0.norm_latents.weight", "VT_Extractor.layers.0.0.norm_latents.bias",
    "VT_Extractor.layers.0.0.to_q.weight", "VT_Extractor.layers.0.0.to_kv.weight", "VT_Extractor.layers.0.0.to_out.weight",
    "VT_Extractor.layers.0.1.0.weight", "VT_Extractor.layers.0.1.0.bias", "VT_Extractor.layers.0.1.1.weight",
    "VT_Extractor.layers.0.1.3.weight", "VT_Extractor.norm.weight", "VT_Extractor.norm.bias",
    "fc_out.weight", "fc_out.bias", "layers.0.0.weight", "layers.0.0.bias", "layers.1.0.weight", "layers.1.0.bias",
    "fc_out_local.weight", "fc_out_local.bias", "layers_local.0.0.weight", "layers_local.0.0.bias",
    "layers_local.1.0.weight", "layers_local.1.0.bias", "local_gate",
}


@pytest.fixture(scope="module")
def method():
    torch.manual_seed(0)
    return build_method("context-i2w", BackboneSpec("tiny-vit"), SMALL).eval()


def test_replace_token_is_one_token_with_id_49405(method):
    ids = method.tokenizer(["a photo of <|replace|> , make it red"])[0]
    assert ids[:6].tolist() == [49406, 320, 1125, 539, 49405, 267]
    assert method.placeholder_id == 49405 and (ids == 49405).sum() == 1
    assert method.backbone.eot_positions(ids[None]).item() == int((ids != 0).sum()) - 1  # EOT still the argmax
    original = method.backbone.tokenizer
    assert len(original.encode(REPLACE_TOKEN)) > 1  # the backbone's own tokenizer is untouched
    assert len(method.tokenizer.encode("jekyll")) == 2 and len(original.encode("jekyll")) == 1  # last merge dropped
    assert method.encode_texts(["make it red"])["placeholder_index"].tolist() == [4]


def test_context_is_the_prompt_with_its_own_replace_row(method):
    texts = ["a photo of <|replace|> , make it red"]
    features = method.encode_texts(texts)
    with torch.no_grad():
        expected = method.backbone.encode_text(method.tokenizer(texts))
    assert torch.allclose(features["context"], expected, atol=1e-5)


def test_mapping_network_forward_gate_and_weight_norm(method):
    net = method.img2text
    w = net.W_R.weight_g * net.W_R.weight_v / net.W_R.weight_v.norm(dim=1, keepdim=True)
    assert torch.allclose(w.norm(dim=1), net.W_R.weight_g.flatten().abs(), atol=1e-5)
    assert net.local_gate.item() == 0.0
    context = torch.randn(2, method.backbone.embed_dim)
    tokens = torch.randn(2, 17, method.backbone.vision_width)
    with torch.no_grad():
        gated = net.W_R(tokens) * net.to_c(context)[:, None]
        global_only = net.fc_out(net.layers(net.ln_post(gated[:, 0]) @ net.proj))
        assert torch.allclose(net(context, tokens), global_only, atol=1e-5)  # tanh(0) = 0
        net.local_gate.fill_(0.5)
        local = net.VT_Extractor(gated[:, 1:]).mean(dim=1)
        local_word = net.fc_out_local(net.layers_local(net.ln_post_local(local) @ net.proj_local))
        assert torch.allclose(net(context, tokens), global_only + math.tanh(0.5) * local_word, atol=1e-5)
        net.local_gate.fill_(0.0)
        assert not torch.allclose(net(context * 2 + 1, tokens), global_only, atol=1e-4)  # context-dependent


def test_cross_attention_matches_the_formula(method):
    attention = method.img2text.VT_Extractor.layers[0][0]
    media, latents = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    with torch.no_grad():
        m, l = attention.norm_media(media), attention.norm_latents(latents)
        q = attention.to_q(l).view(2, 4, 2, 8).transpose(1, 2)
        k, v = attention.to_kv(torch.cat([m, l], dim=1)).chunk(2, dim=-1)
        k, v = (t.view(2, 9, 2, 8).transpose(1, 2) for t in (k, v))
        sim = q @ k.transpose(-1, -2) / math.sqrt(8)
        weights = torch.exp(sim - sim.amax(dim=-1, keepdim=True))
        out = (weights / weights.sum(dim=-1, keepdim=True)) @ v
        expected = attention.to_out(out.transpose(1, 2).reshape(2, 4, 16))
        assert torch.allclose(attention(media, latents), expected, atol=1e-5)


def test_gradients_reach_the_mapping_network_and_not_clip():
    torch.manual_seed(2)
    method = build_method("context-i2w", BackboneSpec("tiny-vit"), SMALL)
    with torch.no_grad():
        method.img2text.local_gate.fill_(0.3)  # so the local branch receives gradient too
    method.train()
    assert not method.backbone.training
    image = method.encode_images(torch.randn(3, 3, 32, 32))
    assert image["tokens"].shape == (3, 17, method.backbone.vision_width)
    captions = ["a red dog on the grass", "<|replace|> at top left", ""]
    assert method.masked_contexts(captions) == ["<|replace|> on the grass", "<|replace|> at top left", "<|replace|>"]
    losses = method.loss({"image": image, "captions": captions, "ids": ["a", "b", "c"]})
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.img2text.parameters())
    assert all(p.grad is None for p in method.backbone.parameters())


def test_masker_none_requires_masked_captions():
    method = build_method("context-i2w", BackboneSpec("tiny-vit"), {**SMALL, "masker": "none"})
    assert method.masked_contexts(["<|replace|> on grass"]) == ["<|replace|> on grass"]
    with pytest.raises(ValueError, match="opencir mask-captions"):
        method.masked_contexts(["a dog on grass"])


def test_save_load_round_trip(method, tmp_path):
    text = method.encode_texts(["a photo of <|replace|> , make it red"])
    reference = method.encode_images(torch.randn(1, 3, 32, 32))
    save_model(method, tmp_path / "model")
    loaded = load_model(tmp_path / "model", expected_method="context-i2w")
    assert loaded.config.depth == 1 and loaded.placeholder_id == 49405
    with torch.no_grad():
        assert torch.allclose(method.compose(reference, text), loaded.compose(reference, loaded.encode_texts(
            ["a photo of <|replace|> , make it red"])), atol=1e-6)


def test_official_checkpoint_layout_loads(tmp_path):
    method = build_method("context-i2w", BackboneSpec("tiny-vit"), SMALL)
    assert set(method.img2text.state_dict()) == OFFICIAL_KEYS_DEPTH_1
    released = {f"module.{k}": torch.randn_like(v) for k, v in method.img2text.state_dict().items()}
    torch.save({"epoch": 5, "state_dict_img2text": released}, tmp_path / "ckpt.pt")
    assert method.load_official_checkpoint(tmp_path / "ckpt.pt")["img2text"] == "loaded"
    assert torch.equal(method.img2text.local_gate, released["module.local_gate"])
