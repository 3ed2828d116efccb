"""Context-I2W (Tang et al., AAAI 2024): context-dependent image-to-word mapping.

Spec 4.2. CLIP is frozen. The mapping network (official name ``IM2TEXT_OWM_Attn``; the
attribute names below follow the released checkpoints) takes the pooled text feature c
(B, D) of a *context* sentence containing ``<|replace|>`` and the pre-ln_post ViT tokens
Z (B, 1+N, W):

1. Intent View Selector: Z_v = W_R(Z) * to_c(c), W_R a weight-normalised linear map
   (a per-row gain times a direction; no orthogonality constraint);
2. Visual Target Extractor: a perceiver resampler (learnable latents, depth 6) over the
   patch tokens Z_v[:, 1:], averaged over the latents;
3. global head on the gated CLS token and local head on the latents (LayerNorm, a
   projection to W_t, Pic2Word's MLP each), S* = x_g + tanh(gate) * x_l, gate = 0 at start.

Training follows the released code: S* from (masked caption, image), then
"a photo of S*" (inserted) against the image, as Pic2Word. The masked captions come from
``opencir mask-captions`` (captions that already hold ``<|replace|>`` are used as they
are); captions without it are masked on the fly with the same masker (``masker``).
At evaluation the context is the benchmark prompt itself with ``<|replace|>`` embedded
by its own vocabulary row, and S* replaces that token. The tokenizer gets
``<|replace|>`` as one special token (spec 4.2.2, ``pseudo_word.with_replace_token``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..backbones import ClipBackbone
from ..nlp.masking import CaptionMasker, build_masker
from .base import METHODS, Features
from .pseudo_word import REPLACE_TOKEN, PseudoWordConfig, PseudoWordMethod, mlp_layers, with_replace_token


@dataclass
class ContextI2WConfig(PseudoWordConfig):
    """Context-I2W hyper-parameters (defaults: the released code for ViT-L/14, spec 4.2.3)."""

    n_layer: int = 2
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    num_latents: int = 4
    ff_mult: int = 4
    masker: str = "auto"
    """How captions without ``<|replace|>`` are masked in training: auto, spacy, fallback, none."""
    spacy_model: str = "en_core_web_sm"


class WeightNormLinear(nn.Module):
    """Bias-free linear map with weight = g * v / ||v|| per output row: (B, ..., in) -> (B, ..., out).

    Parameters ``weight_g`` (out, 1) and ``weight_v`` (out, in), as torch's weight_norm names them.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        direction = nn.Linear(in_dim, out_dim, bias=False).weight.detach()
        self.weight_v = nn.Parameter(direction.clone())
        self.weight_g = nn.Parameter(direction.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return nn.functional.linear(x, weight)


class ContextAttention(nn.Module):
    """Latents attend to [media ; latents]: (B, N, W), (B, n, W) -> (B, n, W). No biases."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)  # (B, heads, n, dim_head)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = self._split(self.to_q(latents))
        k, v = (self._split(t) for t in self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1))
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(dim_head)) v
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class VisualTargetExtractor(nn.Module):
    """Perceiver resampler: (B, N, W) patch tokens -> (B, num_latents, W) latents."""

    def __init__(self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 4,
                 ff_mult: int = 4) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([
                ContextAttention(dim, dim_head, heads),
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff_mult * dim, bias=False), nn.GELU(),
                              nn.Linear(ff_mult * dim, dim, bias=False)),
            ])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(media.shape[0], -1, -1)
        for attention, feed_forward in self.layers:
            latents = latents + attention(media, latents)
            latents = latents + feed_forward(latents)
        return self.norm(latents)


class ContextImg2Text(nn.Module):
    """S* = f(c, Z): context (B, D) and pre-ln_post ViT tokens (B, 1+N, W) -> (B, W_t)."""

    def __init__(self, context_dim: int, vision_width: int, token_width: int, cfg: ContextI2WConfig) -> None:
        super().__init__()
        scale = vision_width ** -0.5
        self.to_c = nn.Linear(context_dim, vision_width, bias=False)
        self.W_R = WeightNormLinear(vision_width, vision_width)
        self.ln_post = nn.LayerNorm(vision_width)
        self.ln_post_local = nn.LayerNorm(vision_width)
        self.proj = nn.Parameter(scale * torch.randn(vision_width, token_width))
        self.proj_local = nn.Parameter(scale * torch.randn(vision_width, token_width))
        self.VT_Extractor = VisualTargetExtractor(vision_width, cfg.depth, cfg.dim_head, cfg.heads, cfg.num_latents,
                                                  cfg.ff_mult)
        self.fc_out = nn.Linear(cfg.middle_dim, token_width)
        self.layers = mlp_layers(token_width, cfg.middle_dim, cfg.n_layer, cfg.dropout)
        self.fc_out_local = nn.Linear(cfg.middle_dim, token_width)
        self.layers_local = mlp_layers(token_width, cfg.middle_dim, cfg.n_layer, cfg.dropout)
        self.local_gate = nn.Parameter(torch.zeros(1))

    def forward(self, context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        gated = self.W_R(tokens) * self.to_c(context).unsqueeze(1)  # Intent View Selector
        local = self.VT_Extractor(gated[:, 1:]).mean(dim=1)
        x_global = self.fc_out(self.layers(self.ln_post(gated[:, 0]) @ self.proj))
        x_local = self.fc_out_local(self.layers_local(self.ln_post_local(local) @ self.proj_local))
        return x_global + torch.tanh(self.local_gate) * x_local


@METHODS.register("context-i2w")
class ContextI2W(PseudoWordMethod):
    """Context-I2W: S* = f(E_T(context), pre-ln_post tokens of the image)."""

    name = "context-i2w"
    config_class = ContextI2WConfig
    official_quick_gelu = True  # OpenAI CLIP
    official_arch = "ViT-L-14"
    checkpoint_format = "context-i2w"
    placeholder = REPLACE_TOKEN

    def __init__(self, backbone: ClipBackbone, config: ContextI2WConfig) -> None:
        super().__init__(backbone, config)
        self.img2text = ContextImg2Text(backbone.embed_dim, backbone.vision_width, backbone.text_width, config)
        self._masker: CaptionMasker | None = None

    def build_tokenizer(self, tokenizer: Any) -> Any:
        return with_replace_token(tokenizer)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> Features:
        """Pooled (B, D) and pre-ln_post tokens (B, 1+N, W) of the frozen ViT."""
        out = self.backbone.image_tokens(pixels)
        return {"pooled": out.pooled, "tokens": out.pre_ln_post}

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Features:
        """Prompt ids, placeholder index and the context c = E_T(prompt) (B, D)."""
        features = super().encode_texts(texts)
        features["context"] = self.encode_plain_text(features["token_ids"])
        return features

    def pseudo_words(self, reference: Features, text: Features) -> torch.Tensor:
        return self.img2text(text["context"].float(), reference["tokens"].float())

    def masked_contexts(self, captions: Sequence[str]) -> list[str]:
        """Captions with their subject masked: as given if they hold ``<|replace|>``."""
        todo = [c for c in captions if REPLACE_TOKEN not in c]
        if not todo:
            return list(captions)
        if self.config.masker == "none":
            raise ValueError(f"caption {todo[0]!r} has no {REPLACE_TOKEN}: run `opencir mask-captions` on the corpus "
                             f"or set method_config.masker to auto, spacy or fallback")
        if self._masker is None:
            self._masker = build_masker(self.config.masker, REPLACE_TOKEN, self.config.spacy_model)
        masked = iter(self._masker(todo))
        return [c if REPLACE_TOKEN in c else next(masked) for c in captions]

    def training_pseudo_words(self, image: Features, captions: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            context = self.encode_plain_text(self.tokenize(self.masked_contexts(captions)))
        return self.img2text(context.float(), image["tokens"].float())
