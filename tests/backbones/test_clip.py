"""The CLIP wrapper: small configs, local checkpoints, token taps, pseudo-token injection."""
from __future__ import annotations

import pytest
import torch

from opencir.backbones import BackboneSpec, ClipBackbone
from opencir.backbones.clip import list_small_configs


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return ClipBackbone(BackboneSpec("tiny-vit")).eval()


def test_small_configs_build_with_their_preprocessing():
    assert {"tiny-vit", "tiny-rn", "small-vit"} <= set(list_small_configs())
    rn = ClipBackbone(BackboneSpec("tiny-rn"))
    assert rn.image_size == 64 and not rn.is_vit
    assert rn.encode_image(torch.randn(2, 3, 64, 64)).shape == (2, rn.embed_dim)
    with pytest.raises(ValueError, match="not a ViT"):
        rn.image_tokens(torch.randn(1, 3, 64, 64))


def test_unknown_architecture_lists_choices():
    with pytest.raises(ValueError, match="unknown backbone architecture 'ViT-Q-99'.*tiny-vit"):
        ClipBackbone(BackboneSpec("ViT-Q-99"))


def test_pooled_and_token_features(vit):
    pixels = torch.randn(2, 3, vit.image_size, vit.image_size)
    tokens = vit.image_tokens(pixels)
    n = (vit.image_size // 8) ** 2
    assert tokens.pre_ln_post.shape == (2, 1 + n, vit.vision_width)
    assert tokens.post_ln_post.shape == tokens.pre_ln_post.shape
    assert not torch.allclose(tokens.pre_ln_post, tokens.post_ln_post)
    assert torch.allclose(tokens.pooled, vit.encode_image(pixels), atol=1e-5)
    ids = vit.tokenize(["a red circle", "make the blue square large"])
    text = vit.text_tokens(ids)
    assert text.tokens.shape == (2, vit.context_length, vit.text_width)
    assert torch.allclose(text.pooled, vit.encode_text(ids), atol=1e-5)
    assert text.eot_index.tolist() == [4, 6]  # SOT at 0, one token per word, then EOT


def test_replacing_a_token_with_its_own_embedding_is_identity(vit):
    ids = vit.tokenize(["a photo of star , red"])
    position = torch.tensor([4])  # "star"
    pseudo = vit.token_embeddings(ids)[0, 4][None]
    injected = vit.encode_text_with_pseudo_tokens(ids, pseudo, position, insert=False)
    assert torch.allclose(injected, vit.encode_text(ids), atol=1e-5)


def test_inserting_before_eot_equals_tokenising_the_word(vit):
    base = vit.tokenize(["a photo of"])
    word_ids = vit.tokenize(["a photo of dog"])
    eot = vit.eot_positions(base)
    pseudo = vit.token_embeddings(word_ids)[0, 4][None]
    inserted = vit.encode_text_with_pseudo_tokens(base, pseudo, eot, insert=True)
    assert torch.allclose(inserted, vit.encode_text(word_ids), atol=1e-5)


def test_insert_refuses_a_full_context(vit):
    ids = vit.tokenize(["word " * 200])
    with pytest.raises(ValueError, match="fills the whole context"):
        vit.encode_text_with_pseudo_tokens(ids, torch.zeros(1, vit.text_width), vit.eot_positions(ids), insert=True)


def test_local_checkpoint_round_trip_and_fingerprint(tmp_path, vit):
    path = tmp_path / "clip.pt"
    torch.save(vit.model.state_dict(), path)
    loaded = ClipBackbone(BackboneSpec("tiny-vit", str(path)))
    ids = vit.tokenize(["a small green cross"])
    assert torch.equal(loaded.encode_text(ids), vit.encode_text(ids))
    assert loaded.fingerprint() == vit.fingerprint()
    with torch.no_grad():
        loaded.model.ln_final.bias.add_(0.1)
    assert loaded.fingerprint() != vit.fingerprint()


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    torch.manual_seed(0)
    plain = ClipBackbone(BackboneSpec("tiny-vit"))
    path = tmp_path / "w.pt"
    torch.save(plain.model.state_dict(), path)
    ckpt = ClipBackbone(BackboneSpec("tiny-vit", str(path), grad_checkpointing=True))
    pixels = torch.randn(2, 3, 32, 32)
    for model in (plain, ckpt):
        model.train()
        model.encode_image(pixels).sum().backward()
    a = plain.model.visual.conv1.weight.grad
    b = ckpt.model.visual.conv1.weight.grad
    assert torch.allclose(a, b, atol=1e-5)
