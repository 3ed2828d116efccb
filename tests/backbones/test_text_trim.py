"""Trimming text padding after the last EOT leaves every pooled text feature unchanged."""
from __future__ import annotations

import pytest
import torch

from opencir.backbones import BackboneSpec, ClipBackbone

TEXTS = [
    "a",
    "make the blue square large",
    "remove the small green triangle in the top left corner and recolour the circle to red",
    "same but " + "very " * 80 + "red",  # longer than the 77-token context: truncated, EOT kept
]


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def backbone(request):
    torch.manual_seed(0)
    return ClipBackbone(BackboneSpec(request.param)).eval()


def test_trim_cuts_after_the_longest_text(backbone):
    ids = backbone.tokenize(TEXTS[:2])
    trimmed = backbone.trim_padding(ids)
    eot = int(ids[1].argmax())
    assert trimmed.shape == (2, eot + 1)  # "make the blue square large": SOT + 5 words + EOT
    assert eot == 6
    assert backbone.trim_padding(ids, spare=2).shape[1] == eot + 3
    assert backbone.trim_padding(backbone.tokenize(TEXTS)).shape[1] == backbone.context_length


@torch.no_grad()
def test_trimmed_pooled_equals_full_context(backbone):
    for texts in (TEXTS[:1], TEXTS[:2], TEXTS[:3], TEXTS):
        ids = backbone.tokenize(texts)
        full = backbone.model.encode_text(ids)  # open_clip's own path, all 77 slots
        ours = backbone.encode_text(ids)
        assert ours.shape == full.shape
        torch.testing.assert_close(ours, full, rtol=0, atol=2e-5)  # reduction order only


@torch.no_grad()
def test_towers_without_causal_mask_are_not_trimmed(backbone):
    ids = backbone.tokenize(TEXTS[:2])
    mask = backbone.model.attn_mask
    try:
        backbone.model.attn_mask = None
        assert not backbone.pads_after_eot
        assert backbone.trim_padding(ids).shape == ids.shape
    finally:
        backbone.model.attn_mask = mask
