"""OpenAI CLIP weights need QuickGELU: loaded into an exact-GELU model they run but every
feature drifts. The backbone corrects the activation (and records it) or refuses."""
from __future__ import annotations

import pytest
import torch

from opencir.backbones import BackboneSpec, ClipBackbone
from opencir.backbones.clip import is_openai_checkpoint, weights_need_quick_gelu


def _features(backbone: ClipBackbone) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    with torch.no_grad():
        image = backbone.encode_image(torch.randn(2, 3, 32, 32))
        text = backbone.encode_text(backbone.tokenize(["a red circle", "two blue squares"]))
    return image, text


def test_an_openai_release_file_gets_quick_gelu(tmp_path):
    torch.manual_seed(1)
    weights = ClipBackbone(BackboneSpec("tiny-vit")).model.state_dict()
    openai = {**weights, "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
              "vocab_size": torch.tensor(49408)}  # the entries OpenAI's files carry
    torch.save(openai, tmp_path / "openai.pt")
    torch.save(weights, tmp_path / "plain.pt")
    assert is_openai_checkpoint(tmp_path / "openai.pt") and not is_openai_checkpoint(tmp_path / "plain.pt")
    assert weights_need_quick_gelu("ViT-B-16", "openai") and not weights_need_quick_gelu("ViT-H-14", "laion2b_s32b_b79k")

    corrected = ClipBackbone(BackboneSpec("tiny-vit", pretrained=str(tmp_path / "openai.pt")))
    assert corrected.uses_quick_gelu and corrected.spec.quick_gelu is True  # recorded: saved models rebuild with it
    reference = ClipBackbone(BackboneSpec("tiny-vit", pretrained=str(tmp_path / "plain.pt"), quick_gelu=True))
    wrong = ClipBackbone(BackboneSpec("tiny-vit", pretrained=str(tmp_path / "plain.pt")))
    assert not wrong.uses_quick_gelu
    for ours, right, drifted in zip(_features(corrected), _features(reference), _features(wrong)):
        assert torch.allclose(ours, right, atol=1e-6)
        assert not torch.allclose(ours, drifted, atol=1e-6)  # what loading silently used to give
    assert corrected.fingerprint() == reference.fingerprint() != wrong.fingerprint()

    with pytest.raises(ValueError, match="OpenAI CLIP weights, trained with QuickGELU; quick_gelu=false"):
        ClipBackbone(BackboneSpec("tiny-vit", pretrained=str(tmp_path / "openai.pt"), quick_gelu=False))


def test_set_activation_swaps_and_records():
    backbone = ClipBackbone(BackboneSpec("tiny-vit"))
    before = _features(backbone)
    assert backbone.set_activation(True) and backbone.uses_quick_gelu and backbone.spec.quick_gelu is True
    assert not torch.allclose(_features(backbone)[1], before[1], atol=1e-6)
    assert backbone.set_activation(False) and not backbone.uses_quick_gelu
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_features(backbone), before))
