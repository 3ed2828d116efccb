"""OFFSET (Chen et al., ACM MM 2025): segmentation-based focus shift revision.

Spec section 5. Every image comes with a soft dominant-portion mask (``opencir masks``)
that goes through the same CLIP preprocessing and the same (trainable) ViT:

* **Visual focus mapping** (5.3.1): post-``ln_post`` patch tokens of the image and of its
  mask attend to each other (bidirectional cross-attention, GroupNorm-ed inputs, scale
  sqrt(C) over the full channel count), are fused by a 1x1 projection, and P focus
  channels pool the 3 global candidates [proj(F[:,0]) + g, g, g_s] and the patches into
  2P tokens (P global + P local: the local count is tied to P, so the official
  ``--Q != --P`` crash cannot happen here).
* **Textual focus mapping** (5.3.2): all text tokens (padding included) and the global
  candidates [fuse(h, g_s) + h, h, g_s], guided by the *reference* mask feature g_s.
* **Textually guided focus revision** (5.3.3): a sigmoid MLP gives per-channel gates;
  gamma/beta are split along rows as the official code does, so released weights load.
* Loss (5.4): CE(kappa * q t^T) with a learnable kappa (init 10) + 0.5 * KL(P||Q) (spec
  1.5) whose teacher P is detached (so the token weights w receive no gradient and stay
  at 1, exactly as in the official code).

``load_official_checkpoint`` reads the official state-dict names (a plain state dict, or
the whole pickled model that the official ``train.py`` saves, without importing its code).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from ..backbones import ClipBackbone
from ..losses import batch_gather
from .base import METHODS, CIRMethod, ContrastiveConfig, Features, Requirements, normalize
from .official import describe_foreign_checkpoint, match_official_activation, read_official_state_dict, strip_module_prefix
from .tgcir import matching_degree_kl, official_query_text  # the same regulariser (spec 1.5) and text rule

if TYPE_CHECKING:
    from ..data.types import CIRDataset, Triplet


@dataclass
class OffsetConfig(ContrastiveConfig):
    """OFFSET hyper-parameters (defaults: the official recipe, spec 5.5). ``loss`` picks the
    ranking loss (default ``infonce``: the official CE with the learnable scale)."""

    focus_channels: int = 4
    """P (``--P``): focus channels; the model makes P global + P local tokens."""
    tau: float = 0.1
    """Temperature of the KL regulariser (``--tau_``)."""
    kl_weight: float = 0.5
    """Weight of the KL regulariser (``--kappa_``; the paper's mu, mapping unverified)."""
    init_scale: float = 10.0
    """Initial value of the learnable contrastive scale kappa (``loss_T``)."""
    attention_heads: int = 4
    norm_groups: int = 16
    backbone_lr: float | None = 1e-5
    """Learning rate of the CLIP parameters (``--clip_lr``); None = ``train.lr``."""
    image_transform: str = "clip"
    train_image_transform: str = "clip-train"
    """open_clip's train crop, drawn independently for an image and its mask (as official)."""
    require_spelling_corrections: bool = True
    """Refuse FashionIQ/Shoes without the official spelling dictionaries (False: warn);
    the official OFFSET code always applies them."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.focus_channels < 1:
            raise ValueError(f"offset focus_channels (P) must be >= 1, got {self.focus_channels}")
        if self.tau <= 0:
            raise ValueError(f"offset tau must be > 0, got {self.tau}")


# --------------------------------------------------------------------- modules
class BidirectionalCrossAttention(nn.Module):
    """Two token sets of equal length attend to each other (spec 5.3.1 step 3).

    ``a`` (B, N, C) is the primary stream (image / text), ``b`` (B, N, C) the mask stream.
    out_a = W_oa(softmax(Q_b K_a^T / sqrt(C)) V_a) + a', out_b likewise with a and b
    swapped; a', b' are the GroupNorm-ed inputs (or the raw inputs when ``norm_groups`` is
    None, as in the official text variant). Heads follow the official channel layout:
    head n owns qkv channels [3*n*d, 3*(n+1)*d) split into q, k, v of d = C / heads each.
    """

    def __init__(self, channels: int, heads: int, norm_groups: int | None) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"cross-attention width {channels} is not divisible by {heads} heads")
        if norm_groups is not None and channels % norm_groups:
            raise ValueError(f"cross-attention width {channels} is not divisible by {norm_groups} GroupNorm groups")
        self.heads = heads
        self.norm_a = nn.GroupNorm(norm_groups, channels) if norm_groups else None
        self.norm_b = nn.GroupNorm(norm_groups, channels) if norm_groups else None
        self.qkv_a = nn.Linear(channels, 3 * channels, bias=False)
        self.out_a = nn.Linear(channels, channels)
        self.qkv_b = nn.Linear(channels, 3 * channels, bias=False)
        self.out_b = nn.Linear(channels, channels)

    @staticmethod
    def _group_norm(norm: nn.GroupNorm | None, x: torch.Tensor) -> torch.Tensor:
        return x if norm is None else norm(x.transpose(1, 2)).transpose(1, 2)

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, 3C) -> q, k, v each (B, heads, N, C / heads)."""
        b, n, _ = qkv.shape
        parts = qkv.view(b, n, self.heads, 3, -1).permute(3, 0, 2, 1, 4)
        return parts[0], parts[1], parts[2]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if a.shape != b.shape:
            raise ValueError(f"cross-attention needs equal token sets, got {tuple(a.shape)} and {tuple(b.shape)}")
        batch, length, channels = a.shape
        a, b = self._group_norm(self.norm_a, a), self._group_norm(self.norm_b, b)
        q_a, k_a, v_a = self._split(self.qkv_a(a))
        q_b, k_b, v_b = self._split(self.qkv_b(b))
        scale = 1.0 / math.sqrt(channels)  # full width, not the head width (official)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            weights = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
            return (weights @ v).transpose(1, 2).reshape(batch, length, channels)

        return self.out_a(attend(q_b, k_a, v_a)) + a, self.out_b(attend(q_a, k_b, v_b)) + b


class FocusMapping(nn.Module):
    """P focus channels pooling a token set (official ``chanel_score``).

    scores = softmax_over_tokens(W2 tanh(W1 x)) (no biases); returns (B, P, D) = scores^T x
    for x (B, N, D).
    """

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, dim // 2, bias=False)
        self.scores = nn.Linear(dim // 2, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.scores(torch.tanh(self.hidden(x))), dim=1)  # over tokens
        return weights.transpose(1, 2) @ x


class FocusRevision(nn.Module):
    """Textually guided focus revision (official ``FeatureWiseAffine``, spec 5.3.3).

    For reference tokens v and text tokens m, both (B, 2P, D): the per-token MLP output
    (B, 2P, 2D) is reshaped row-major to (B, 4P, D) and split along rows into gamma and
    beta (B, 2P, D) each -- the official split, kept so released checkpoints load.
    Returns gamma * v + beta * m.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.LeakyReLU(), nn.Linear(dim, 2 * dim), nn.Sigmoid())

    def gates(self, v: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma, beta (B, 2P, D) for v, m (B, 2P, D)."""
        out = self.mlp(torch.cat([v, m], dim=-1))
        gamma, beta = out.reshape(v.shape[0], 2 * v.shape[1], v.shape[2]).chunk(2, dim=1)
        return gamma, beta

    def forward(self, v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.gates(v, m)
        return gamma * v + beta * m


# ---------------------------------------------------------------------- method
@METHODS.register("offset")
class Offset(CIRMethod):
    """OFFSET on a ViT CLIP backbone; every image needs its soft mask."""

    name = "offset"
    config_class = OffsetConfig
    official_quick_gelu = False  # OpenCLIP ViT-H-14 LAION-2B
    official_arch = "ViT-H-14"
    checkpoint_format = "offset"

    def __init__(self, backbone: ClipBackbone, config: OffsetConfig) -> None:
        super().__init__(backbone, config)
        if not backbone.is_vit:
            raise ValueError(f"offset needs a ViT backbone (patch tokens), got {backbone.spec.arch!r}")
        if backbone.model.visual.proj is None:
            raise ValueError(f"offset needs the ViT's visual projection; {backbone.spec.arch!r} has none")
        width, dim, p = backbone.vision_width, backbone.embed_dim, config.focus_channels
        self.seg_attention = BidirectionalCrossAttention(width, config.attention_heads, config.norm_groups)
        self.seg_fusion = nn.Linear(2 * width, width)
        self.image_fc = nn.Linear(width, dim)
        self.image_focus = FocusMapping(dim, p)
        self.text_seg_attention = BidirectionalCrossAttention(dim, config.attention_heads, None)
        self.text_seg_fusion = nn.Linear(2 * dim, dim)
        self.text_fc = nn.Linear(backbone.text_width, dim)
        self.text_focus = FocusMapping(dim, p)
        self.revision = FocusRevision(dim)
        self.logit_scale = nn.Parameter(torch.tensor([float(config.init_scale)]))
        self.token_weights = nn.Parameter(torch.ones(2 * p))

    @property
    def requirements(self) -> Requirements:
        return Requirements(
            needs_masks=True,
            image_transform=self.config.image_transform,
            train_image_transform=self.config.train_image_transform,
            caption_policy="tgcir",
        )

    def query_text(self, dataset: "CIRDataset", triplet: "Triplet", train: bool, rng: random.Random) -> str:
        """The official OFFSET text: TG-CIR's rule (``tgcir.official_query_text``)."""
        return official_query_text(self, dataset, triplet, train, rng)

    def train(self, mode: bool = True) -> "Offset":
        super().train(mode)
        for module in self.modules():  # official: only BatchNorm2d layers stay in eval mode
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    # -------------------------------------------------------------- images
    def encode_images(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> Features:
        """Visual focus mapping: pixels and masks (B, 3, S, S) -> ``tokens`` (B, 2P, D)
        and ``mask_pooled`` g_s (B, D), the pooled mask feature the text branch uses."""
        if masks is None:
            raise ValueError("offset needs a mask per image: run `opencir masks` for this dataset first")
        if masks.shape != pixels.shape:
            raise ValueError(f"offset: masks {tuple(masks.shape)} and pixels {tuple(pixels.shape)} differ in shape")
        batch = pixels.shape[0]
        out = self.backbone.image_tokens(torch.cat([pixels, masks]))  # one pass over images and masks
        g, g_s = out.pooled[:batch], out.pooled[batch:]
        image, mask = out.post_ln_post[:batch, 1:], out.post_ln_post[batch:, 1:]  # CLS dropped
        o_image, o_mask = self.seg_attention(image, mask)
        fused = self.seg_fusion(torch.cat([o_image, o_mask], dim=-1))  # (B, N, W)
        first = fused[:, 0] @ self.backbone.model.visual.proj  # the top-left patch, not a CLS
        candidates = torch.stack([first + g, g, g_s], dim=1)  # (B, 3, D)
        tokens = torch.cat([self.image_focus(candidates), self.image_focus(self.image_fc(fused))], dim=1)
        return {"tokens": tokens, "mask_pooled": g_s}

    def embed_targets(self, target: Features) -> torch.Tensor:
        """norm(mean of the 2P target tokens): (B, D)."""
        return normalize(target["tokens"].float().mean(dim=1))

    # --------------------------------------------------------------- texts
    def encode_texts(self, texts: Sequence[str]) -> Features:
        """Text tower: ``pooled`` h (B, D) and the P ``local`` focus tokens (B, P, D) over
        every position, padding included. The global tokens need the reference mask
        feature, so ``compose`` makes them."""
        device = next(self.backbone.parameters()).device
        out = self.backbone.text_tokens(self.backbone.tokenize(list(texts)).to(device))
        return {"pooled": out.pooled, "local": self.text_focus(self.text_fc(out.tokens))}

    def text_tokens(self, text: Features, mask_pooled: torch.Tensor) -> torch.Tensor:
        """Textual focus mapping guided by the reference mask feature: (B, 2P, D)."""
        h, g_s = text["pooled"][:, None], mask_pooled[:, None]
        o_text, o_mask = self.text_seg_attention(h, g_s)
        guided = self.text_seg_fusion(torch.cat([o_text, o_mask], dim=-1))
        candidates = torch.cat([guided + h, h, g_s], dim=1)  # (B, 3, D)
        return torch.cat([self.text_focus(candidates), text["local"]], dim=1)

    # ------------------------------------------------------------- compose
    def fused_tokens(self, reference: Features, text: Features) -> torch.Tensor:
        """Revised query tokens Phi = gamma * V_ref + beta * M: (B, 2P, D)."""
        return self.revision(reference["tokens"], self.text_tokens(text, reference["mask_pooled"]))

    def compose(self, reference: Features, text: Features) -> torch.Tensor:
        """q = norm(mean of Phi): (B, D)."""
        return normalize(self.fused_tokens(reference, text).float().mean(dim=1))

    def teacher_vectors(self, target: Features) -> torch.Tensor:
        """t_T = flatten(w * token-normalised target tokens): (B, 2P * D) (spec 5.3.4)."""
        return (normalize(target["tokens"]) * self.token_weights[None, :, None]).flatten(1)

    def loss(self, batch: Mapping[str, Features]) -> dict[str, torch.Tensor]:
        """L = CE(kappa q t^T) + kl_weight * KL(P || Q); the teacher P is detached."""
        query = self.compose(batch["reference"], batch["text"])
        target = self.embed_targets(batch["target"])
        query, target, teacher = batch_gather(batch)(query, target, self.teacher_vectors(batch["target"]))
        rank = self.contrastive_loss(query, target, self.logit_scale.float())
        kl = matching_degree_kl(query, target, teacher, self.config.tau)
        return {"loss": rank.loss + self.config.kl_weight * kl, **rank.logs, "kl": kl.detach()}

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Two AdamW groups as official: CLIP at ``backbone_lr``, the rest at ``lr``."""
        clip_ids = {id(p) for p in self.backbone.parameters()}
        named = self.trainable_parameters()
        clip = [p for _, p in named if id(p) in clip_ids]
        rest = [p for _, p in named if id(p) not in clip_ids]
        clip_lr = lr if self.config.backbone_lr is None else self.config.backbone_lr
        groups = [{"params": clip, "lr": clip_lr, "weight_decay": weight_decay},
                  {"params": rest, "lr": lr, "weight_decay": weight_decay}]
        return [g for g in groups if g["params"]]

    # ----------------------------------------------------- official weights
    def load_official_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Load weights saved by the official code (``torch.save(model)`` or a state dict).

        Returns ``{"loaded": n, "ignored": [...]}``; ``ignored`` lists the official
        modules that its forward pass never uses. Fails clearly for another method's file.
        """
        state = read_official_state_dict(path, "offset")
        mapped, ignored = map_official_state_dict(state, path)
        expected_p = mapped["image_focus.scores.weight"].shape[0]
        if expected_p != self.config.focus_channels:
            raise ValueError(
                f"{path} has P={expected_p} focus channels but this model has focus_channels="
                f"{self.config.focus_channels}; build it with method_config.focus_channels={expected_p}"
            )
        own = self.state_dict()
        for key, value in list(mapped.items()):
            if key not in own or own[key].shape == value.shape:
                continue
            rank = own[key].dim()
            if value.shape[:rank] == own[key].shape and all(d == 1 for d in value.shape[rank:]):
                mapped[key] = value.reshape(own[key].shape)  # 1x1 conv kernels -> linear weights
            else:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, this model expects {tuple(own[key].shape)}"
                                 f" (backbone {self.backbone.spec.arch!r}, P={self.config.focus_channels})")
        result = self.load_state_dict(mapped, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("attn_mask") and not k.startswith("criterion.")]
        unexpected = [k for k in result.unexpected_keys if not k.endswith("attn_mask")]
        if missing or unexpected:
            raise ValueError(f"{path} does not fit this OFFSET model (backbone {self.backbone.spec.arch!r}): "
                             f"missing {missing[:6]}, unexpected {unexpected[:6]}")
        match_official_activation(self, path)  # OpenCLIP ViT-H-14 (LAION-2B): exact GELU
        return {"loaded": len(mapped), "ignored": ignored}


# ------------------------------------------------------- official checkpoints
OFFICIAL_PREFIXES: dict[str, str] = {
    "backbone.clip.": "backbone.model.",
    "backbone.fc.": "image_fc.",
    "backbone.text_fc.": "text_fc.",
    "backbone.chanel_score.0.": "image_focus.hidden.",
    "backbone.chanel_score.2.": "image_focus.scores.",
    "backbone.chanel_score_text.0.": "text_focus.hidden.",
    "backbone.chanel_score_text.2.": "text_focus.scores.",
    "backbone.cross_attention.norm_A.": "seg_attention.norm_a.",
    "backbone.cross_attention.norm_B.": "seg_attention.norm_b.",
    "backbone.cross_attention.qkv_A.": "seg_attention.qkv_a.",
    "backbone.cross_attention.qkv_B.": "seg_attention.qkv_b.",
    "backbone.cross_attention.out_A.": "seg_attention.out_a.",
    "backbone.cross_attention.out_B.": "seg_attention.out_b.",
    "backbone.cross_attention_text.qkv_A.": "text_seg_attention.qkv_a.",
    "backbone.cross_attention_text.qkv_B.": "text_seg_attention.qkv_b.",
    "backbone.cross_attention_text.out_A.": "text_seg_attention.out_a.",
    "backbone.cross_attention_text.out_B.": "text_seg_attention.out_b.",
    "backbone.seg_fusion.fusion_proj.": "seg_fusion.",
    "backbone.segText_fusion.": "text_seg_fusion.",
    "affine.MLP.0.": "revision.mlp.0.",
    "affine.MLP.2.": "revision.mlp.2.",
    "loss_T": "logit_scale",
    "local_weight": "token_weights",
}
"""Official state-dict name prefix -> OpenCIR name prefix (spec 5.3; ``model_OFFSET.py``)."""

OFFICIAL_UNUSED_PREFIXES: tuple[str, ...] = (
    "backbone.attention_spatial.",  # declared, never called
    "backbone.cross_attention_text.norm_A.",  # GroupNorms declared but not applied
    "backbone.cross_attention_text.norm_B.",
    "affine.cross_attention_text.",  # a Cross_attention_1d(512) inside the affine, unused
)
OFFICIAL_SIGNATURE = ("backbone.cross_attention.qkv_A.weight", "affine.MLP.0.weight", "local_weight")


def map_official_state_dict(state: Mapping[str, torch.Tensor], source: str | Path = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename official OFFSET keys to OpenCIR keys; returns (mapped, ignored official keys)."""
    state = strip_module_prefix(state)
    missing = [k for k in OFFICIAL_SIGNATURE if k not in state]
    if missing:
        raise ValueError(f"{source} is not an OFFSET checkpoint: it lacks {missing}; {describe_foreign_checkpoint(state, 'offset')}")
    tokens = state["local_weight"].numel()
    p = state["backbone.chanel_score.2.weight"].shape[0]
    if tokens != 2 * p:
        raise ValueError(
            f"{source}: local_weight has {tokens} entries but the model makes 2P = {2 * p} tokens; "
            f"it was trained with --Q != --P, which the official code cannot run (use Q = P)"
        )
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith(OFFICIAL_UNUSED_PREFIXES):
            ignored.append(key)
            continue
        prefix = next((p for p in OFFICIAL_PREFIXES if key.startswith(p) or key == p.rstrip(".")), None)
        if prefix is None:
            unknown.append(key)
            continue
        mapped[OFFICIAL_PREFIXES[prefix] + key[len(prefix):]] = value
    if unknown:
        raise ValueError(f"{source}: unknown keys for an OFFSET checkpoint: {unknown[:8]}")
    return mapped, ignored
