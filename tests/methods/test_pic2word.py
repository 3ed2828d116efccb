"""Pic2Word: prompt rendering, insertion vs replacement, gradients, save/load, official weights."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from opencir.backbones import BackboneSpec
from opencir.data.types import CIRDataset, Triplet
from opencir.methods.io import build_method, load_model, save_model
from opencir.methods.pseudo_word import ZERO_SHOT_PROMPT_KEY, render_prompt

OFFICIAL_IMG2TEXT_KEYS = {
    "layers.0.0.weight", "layers.0.0.bias", "layers.1.0.weight", "layers.1.0.bias", "fc_out.weight", "fc_out.bias",
}


@pytest.fixture(scope="module")
def method():
    torch.manual_seed(0)
    return build_method("pic2word", BackboneSpec("tiny-vit")).eval()


def _dataset(info=None, captions=("make it red",), extra=None) -> CIRDataset:
    triplet = Triplet("q0", "r0", tuple(captions), ("t0",), (), extra or {})
    return CIRDataset("toy", "val", Path("."), [triplet], {}, [], None, "first", info=info or {})


def test_star_is_one_token_and_prompts_follow_the_dataset(method):
    assert method.placeholder_id == method.tokenizer(["*"])[0][1].item()
    rng = random.Random(0)
    plain = _dataset()
    assert method.query_text(plain, plain.triplets[0], False, rng) == "a photo of * , make it red"
    imagenet = _dataset({ZERO_SHOT_PROMPT_KEY: "a {text} of {placeholder}"}, captions=("cartoon",))
    assert method.query_text(imagenet, imagenet.triplets[0], False, rng) == "a cartoon of *"
    per_query = _dataset({ZERO_SHOT_PROMPT_KEY: "a {text} of {placeholder}"},
                         extra={ZERO_SHOT_PROMPT_KEY: "a photo of {placeholder} and {text}"}, captions=("dog and cat",))
    assert method.query_text(per_query, per_query.triplets[0], False, rng) == "a photo of * and dog and cat"
    fashion = _dataset(captions=("is red.", "has long sleeves"))
    # the official "a photo of * , {} and {}".format(c2, c1): raw captions, nothing stripped
    assert method.query_text(fashion, fashion.triplets[0], False, rng) == "a photo of * , has long sleeves and is red."
    with pytest.raises(ValueError, match="no \\{placeholder\\} slot"):
        render_prompt("a photo of {text}", "*", "x")


def test_insertion_reads_eot_at_its_new_index(method):
    """Inserting S* into "a photo of" must equal replacing the * of "a photo of *"."""
    pseudo = torch.randn(3, method.backbone.text_width)
    ids = method.train_ids.expand(3, -1)
    eot = method.backbone.eot_positions(ids)
    assert eot.tolist() == [4, 4, 4]  # [SOT, a, photo, of, EOT]
    with torch.no_grad():
        inserted = method.encode_with_pseudo(ids, pseudo, eot, insert=True)
        star = method.encode_texts(["a photo of *"] * 3)
        assert star["placeholder_index"].tolist() == [4, 4, 4]
        replaced = method.encode_with_pseudo(star["token_ids"], pseudo, star["placeholder_index"], insert=False)
        untrimmed = method.backbone.encode_text_with_pseudo_tokens(ids, pseudo, eot, insert=True)
        stale_eot = method.backbone.text_tokens(ids).pooled  # what reading the old EOT index would give
    assert torch.allclose(inserted, replaced, atol=1e-5)
    assert torch.allclose(inserted, untrimmed, atol=1e-5)  # padding trimming is exact
    assert not torch.allclose(inserted, stale_eot, atol=1e-3)


def test_compose_replaces_the_placeholder_in_place(method):
    text = method.encode_texts(["a photo of * , make it red", "turn it blue"])
    assert text["placeholder_index"].tolist() == [4, 4]  # the bare text went into the default prompt
    reference = {"pooled": torch.randn(2, method.backbone.embed_dim)}
    with torch.no_grad():
        query = method.compose(reference, text)
        pseudo = method.img2text(reference["pooled"])
        expected = method.backbone.encode_text_with_pseudo_tokens(text["token_ids"], pseudo, text["placeholder_index"], False)
    assert torch.allclose(query, torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)
    assert torch.allclose(query.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_gradients_reach_the_mapping_network_and_not_clip():
    torch.manual_seed(1)
    method = build_method("pic2word", BackboneSpec("tiny-vit"))
    method.train()
    assert not method.backbone.training and method.img2text.training
    assert all(not p.requires_grad for p in method.backbone.parameters())
    image = method.encode_images(torch.randn(4, 3, 32, 32))
    losses = method.loss({"image": image, "captions": ["a"] * 4, "ids": list("abcd")})
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.img2text.parameters())
    assert all(p.grad is None for p in method.backbone.parameters())
    assert torch.isclose(losses["loss"], 0.5 * (losses["image_to_text"] + losses["text_to_image"]))


def test_official_weight_decay_groups(method):
    groups = method.parameter_groups(1e-4, 0.1)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    named = dict(method.img2text.named_parameters())
    assert by_decay[0.0] == {id(p) for n, p in named.items() if n.endswith("bias")}
    assert by_decay[0.1] == {id(p) for n, p in named.items() if n.endswith("weight")}


def test_save_load_round_trip(method, tmp_path):
    text = method.encode_texts(["a photo of * , make it red"])
    reference = {"pooled": torch.randn(1, method.backbone.embed_dim)}
    save_model(method, tmp_path / "model")
    loaded = load_model(tmp_path / "model", expected_method="pic2word")
    with torch.no_grad():
        assert torch.allclose(method.compose(reference, text), loaded.compose(reference, text), atol=1e-6)


def test_official_checkpoint_layout_loads(method, tmp_path):
    fresh = build_method("pic2word", BackboneSpec("tiny-vit"))
    assert set(fresh.img2text.state_dict()) == OFFICIAL_IMG2TEXT_KEYS
    released = {f"module.{k}": torch.randn_like(v) for k, v in fresh.img2text.state_dict().items()}
    clip = {f"module.{k}": v for k, v in method.backbone.model.state_dict().items()}
    torch.save({"epoch": 30, "name": "pic2word", "state_dict": clip, "state_dict_img2text": released,
                "optimizer": None}, tmp_path / "epoch_30.pt")
    report = fresh.load_official_checkpoint(tmp_path / "epoch_30.pt", load_clip=True)
    assert report == {"img2text": "loaded", "epoch": 30, "clip": "loaded"}
    for key, value in fresh.img2text.state_dict().items():
        assert torch.equal(value, released[f"module.{key}"])
    torch.save({"state_dict_img2text": {"fc_out.weight": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing"):
        fresh.load_official_checkpoint(tmp_path / "bad.pt")
