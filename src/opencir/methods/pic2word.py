"""Pic2Word (Saito et al., CVPR 2023): zero-shot CIR with an image-to-pseudo-word MLP.

Spec 4.1. CLIP is frozen (and in eval mode); the mapping network ``IM2TEXT`` turns the
raw pooled image feature v (B, D) into S* (B, W_t) in the token-embedding space:
[Linear(D, 512), Dropout(0.1), ReLU] x 2 -> Linear(512, W_t). Training uses images
only: "a photo of S*" (S* inserted before EOT) against v, symmetric InfoNCE with
CLIP's frozen scale. Evaluation replaces the ``*`` token of the benchmark prompt (see
``pseudo_word`` for how a dataset picks its prompt). Released checkpoints
(``state_dict_img2text``: ``layers.{0,1}.0.*``, ``fc_out.*``) load with
``load_official_checkpoint``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..backbones import ClipBackbone
from .base import METHODS, Features
from .pseudo_word import PseudoWordConfig, PseudoWordMethod, mlp_layers


@dataclass
class Pic2WordConfig(PseudoWordConfig):
    """Pic2Word hyper-parameters (defaults: the official code, spec 4.1.1)."""

    n_layer: int = 2


class Img2Text(nn.Module):
    """Pic2Word's mapping MLP; attribute names follow the released checkpoints.

    (B, in_dim) -> (B, out_dim).
    """

    def __init__(self, in_dim: int, middle_dim: int, out_dim: int, n_layer: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc_out = nn.Linear(middle_dim, out_dim)
        self.layers = mlp_layers(in_dim, middle_dim, n_layer, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.layers(x))


@METHODS.register("pic2word")
class Pic2Word(PseudoWordMethod):
    """Pic2Word: S* = IM2TEXT(v) with v the unnormalised pooled CLIP image feature."""

    name = "pic2word"
    config_class = Pic2WordConfig
    official_quick_gelu = True  # OpenAI CLIP
    official_arch = "ViT-L-14"
    checkpoint_format = "pic2word"
    placeholder = "*"

    def __init__(self, backbone: ClipBackbone, config: Pic2WordConfig) -> None:
        super().__init__(backbone, config)
        self.img2text = Img2Text(backbone.embed_dim, config.middle_dim, backbone.text_width, config.n_layer, config.dropout)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> Features:
        """Raw pooled image features (B, D) of the frozen image tower."""
        return {"pooled": self.backbone.encode_image(pixels)}

    def pseudo_words(self, reference: Features, text: Features) -> torch.Tensor:
        return self.img2text(reference["pooled"].float())

    def training_pseudo_words(self, image: Features, captions: Sequence[str]) -> torch.Tensor:
        return self.img2text(image["pooled"].float())  # captions are loaded but unused (spec 4.1.3)
