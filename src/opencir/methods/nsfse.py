"""NSFSE-style composer: semantic enhancement of word features + gated residual composition.

**This is a reconstruction, not the authors' method.** NSFSE ("Negative-Sensitive
Framework With Semantic Enhancement for Composed Image Retrieval", Wang et al., IEEE TMM
2024) has no public code and only its abstract could be read. Spec section 6.3 proposes
a design in the paper's spirit ([INFERRED]); this module implements it on a frozen CLIP
backbone (the paper's backbone is unknown and probably not CLIP, spec 6.2):

1. word features W (B, L, D): the ln_final text tokens through CLIP's text projection
   (SOT and padding masked out); regions R (B, N, D): the post-ln_post ViT patch tokens
   through the visual projection, average-pooled to a ``region_grid`` x ``region_grid`` grid;
2. affinity infusion: w~_i = LN(w'_i + sum_j softmax_j(cos(w'_i, r'_j) / tau) r'_j) with
   learned projections w' = P_w w, r' = P_r r of width H;
3. text-guided attention pooling: s = sum_i softmax_i(MLP(w~_i)) w~_i;
4. text feature t = norm(x_T) + P_s s (P_s starts at zero, so training starts from CLIP's
   sentence feature) and the gated residual (TIRG-like) query
   phi = norm(g(x_r, t) * norm(x_r) + res(x_r, t)).

The gallery side is the normalised pooled CLIP image feature: one vector per image, so
the model indexes and searches like every other method. The spec's optional local term
(mean over words of max over the candidate's regions) is **not** used at scoring time:
the max over a candidate's regions cannot be written as one dot product with a single
gallery vector, so it would need every region of every gallery image at search time.

The matching loss defaults to ``loss: nsfse`` (``opencir.losses``, the negative-sensitive
adaptive-boundary loss + InfoNCE); ``loss: infonce`` gives the ablation without it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from ..backbones import ClipBackbone
from ..losses import batch_gather
from .base import METHODS, CIRMethod, ContrastiveConfig, Features, Requirements, normalize


@dataclass
class NsfseConfig(ContrastiveConfig):
    """Hyper-parameters of the reconstructed NSFSE composer (all [INFERRED], spec 6.3).

    ``hidden_dim`` H (default: the embedding width D), ``region_grid`` (None keeps every
    patch token), ``max_words`` text positions kept (SOT included), affinity temperature
    tau, dropout, the initial inverse temperature of the InfoNCE logits and whether it is
    learned (TG-CIR style, initialised to 10).
    """

    loss: str = "nsfse"
    hidden_dim: int | None = None
    region_grid: int | None = 7
    max_words: int = 32
    affinity_temperature: float = 0.1
    dropout: float = 0.1
    logit_scale: float = 10.0
    learnable_scale: bool = True
    image_transform: str = "clip"
    caption_policy: str = "clip4cir"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.region_grid is not None and self.region_grid < 1:
            raise ValueError(f"nsfse region_grid must be >= 1 or null, got {self.region_grid}")
        if self.max_words < 2:
            raise ValueError(f"nsfse max_words must be >= 2 (SOT + one word), got {self.max_words}")
        if not self.affinity_temperature > 0:
            raise ValueError(f"nsfse affinity_temperature must be > 0, got {self.affinity_temperature}")


def _require_vit(backbone: ClipBackbone) -> None:
    if not backbone.is_vit:
        raise ValueError(
            f"nsfse needs ViT patch tokens; backbone {backbone.spec.arch!r} is not a ViT (use e.g. ViT-B-16 or tiny-vit)"
        )


def project_image_regions(backbone: ClipBackbone, pixels: torch.Tensor, grid: int | None) -> Features:
    """Pooled image feature (B, D) and projected patch regions (B, N', D) of a ViT backbone;
    ``grid`` average-pools the P x P patch map to grid x grid (no-op when grid >= P)."""
    _require_vit(backbone)
    tokens = backbone.image_tokens(pixels)
    patches = tokens.post_ln_post[:, 1:]  # CLS dropped: regions only
    proj = backbone.model.visual.proj
    if proj is not None:
        patches = patches @ proj
    side = math.isqrt(patches.shape[1])
    if grid is not None and grid < side and side * side == patches.shape[1]:
        batch, _, dim = patches.shape
        grid_map = patches.transpose(1, 2).reshape(batch, dim, side, side)
        patches = nn.functional.adaptive_avg_pool2d(grid_map, grid).flatten(2).transpose(1, 2)
    return {"pooled": tokens.pooled, "regions": patches}


def project_words(backbone: ClipBackbone, token_ids: torch.Tensor, max_words: int) -> Features:
    """Pooled text feature (B, D), word features (B, L', D) through the text projection and
    a boolean mask (B, L') of real words (SOT and padding excluded, EOT kept); L' = max_words."""
    out = backbone.text_tokens(token_ids)
    words = out.tokens[:, :max_words]
    proj = backbone.model.text_projection
    words = proj(words) if isinstance(proj, nn.Linear) else words @ proj
    positions = torch.arange(words.shape[1], device=token_ids.device)
    mask = (positions[None, :] >= 1) & (positions[None, :] <= out.eot_index[:, None])
    return {"pooled": out.pooled, "words": words, "mask": mask}


class SemanticEnhancement(nn.Module):
    """Affinity infusion + text-guided attention pooling.

    words (B, L, D), mask (B, L) bool, regions (B, N, D) -> sentence (B, H), attention (B, L).
    """

    def __init__(self, dim: int, hidden: int, temperature: float, dropout: float) -> None:
        super().__init__()
        self.word_proj = nn.Linear(dim, hidden)
        self.region_proj = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.attention = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.temperature = temperature

    def infuse(self, words: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """w~ = LN(w' + softmax_j(cos(w', r') / tau) r'): (B, L, H)."""
        w, r = self.word_proj(words), self.region_proj(regions)
        affinity = normalize(w) @ normalize(r).transpose(1, 2)  # (B, L, N) cosines
        attended = torch.softmax(affinity / self.temperature, dim=-1) @ r
        return self.norm(w + attended)

    def forward(self, words: torch.Tensor, mask: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        infused = self.infuse(words.float(), regions.float())
        logits = self.attention(infused).squeeze(-1).masked_fill(~mask.bool(), float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        return (weights.unsqueeze(-1) * infused).sum(dim=1), weights


class GatedResidualComposer(nn.Module):
    """TIRG-like composition: g(x, t) * x + res(x, t) on (B, D) inputs -> (B, D) (unnormalised)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.Sigmoid())
        self.residual = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        joint = torch.cat([image, text], dim=-1)
        return self.gate(joint) * image + self.residual(joint)


@METHODS.register("nsfse")
class Nsfse(CIRMethod):
    """Reconstructed NSFSE composer on a frozen CLIP ViT ([INFERRED], see module docstring)."""

    name = "nsfse"
    config_class = NsfseConfig
    checkpoint_format = "nsfse-reconstruction"

    def __init__(self, backbone: ClipBackbone, config: NsfseConfig) -> None:
        super().__init__(backbone, config)
        _require_vit(backbone)
        d = backbone.embed_dim
        h = config.hidden_dim or d
        self.enhance = SemanticEnhancement(d, h, config.affinity_temperature, config.dropout)
        self.sentence_out = nn.Linear(h, d)
        nn.init.zeros_(self.sentence_out.weight)
        nn.init.zeros_(self.sentence_out.bias)
        self.composer = GatedResidualComposer(d, h, config.dropout)
        self.scale = nn.Parameter(torch.tensor(float(config.logit_scale)), requires_grad=config.learnable_scale)
        self.freeze_backbone(image=True, text=True)

    @property
    def requirements(self) -> Requirements:
        return Requirements(
            image_encoder_frozen=True,
            text_encoder_frozen=True,
            image_transform=self.config.image_transform,
            caption_policy=self.config.caption_policy,
        )

    def encode_images(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> Features:
        """{"pooled": (B, D), "regions": (B, N', D)}."""
        return project_image_regions(self.backbone, pixels, self.config.region_grid)

    def encode_texts(self, texts: Sequence[str]) -> Features:
        """{"pooled": (B, D), "words": (B, L', D), "mask": (B, L') bool}."""
        device = next(self.backbone.parameters()).device
        return project_words(self.backbone, self.backbone.tokenize(list(texts)).to(device), self.config.max_words)

    def text_feature(self, reference: Features, text: Features) -> torch.Tensor:
        """Enhanced text feature t = norm(x_T) + P_s(s): (B, D)."""
        sentence, _ = self.enhance(text["words"], text["mask"], reference["regions"])
        return normalize(text["pooled"]) + self.sentence_out(sentence)

    def compose(self, reference: Features, text: Features) -> torch.Tensor:
        image = normalize(reference["pooled"])
        return normalize(self.composer(image, self.text_feature(reference, text)))

    def loss(self, batch: Mapping[str, Features]) -> dict[str, torch.Tensor]:
        query = self.compose(batch["reference"], batch["text"])
        target = self.embed_targets(batch["target"])
        query, target = batch_gather(batch)(query, target)  # thresholds from the global batch
        out = self.contrastive_loss(query, target, self.scale)
        return {**out.logs, "loss": out.loss, "scale": self.scale.detach()}
