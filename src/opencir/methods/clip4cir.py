"""CLIP4Cir (Baldrati et al., ACM TOMM 2023): task-oriented CLIP fine-tuning + Combiner.

Spec section 2. Stage ``finetune``: both CLIP encoders are trained so that the element-wise
sum of raw reference-image and text features matches the target image feature
(CE with a fixed scale of 100; CLIP stays in ``eval()`` mode so BN statistics are frozen).
Stage ``combiner``: CLIP (the stage-1 weights) is frozen and the Combiner MLP is trained
on cached features. Preprocessing is TargetPad (ratio 1.25). Official checkpoints load:
a stage-1 file with key ``"CLIP"`` and a Combiner file with key ``"Combiner"``.
The paper's loss is in-batch InfoNCE (``loss: infonce``, the default); ``loss: nsfse``
swaps in the negative-sensitive loss of ``opencir.losses`` (not part of CLIP4Cir).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..backbones import ClipBackbone
from ..losses import batch_gather
from .base import METHODS, CIRMethod, ContrastiveConfig, Features, Requirements, normalize
from .official import describe_foreign_checkpoint, match_official_activation, read_official_checkpoint, strip_module_prefix

STAGES = ("finetune", "combiner")
ENCODER_CHOICES = ("both", "image", "text")


@dataclass
class Clip4CirConfig(ContrastiveConfig):
    """CLIP4Cir hyper-parameters (defaults: the README recipe, spec 2.4-2.5)."""

    stage: str = "finetune"
    encoder: str = "both"
    projection_dim: int | None = None
    hidden_dim: int | None = None
    dropout: float = 0.5
    logit_scale: float = 100.0
    image_transform: str = "targetpad"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage not in STAGES:
            raise ValueError(f"clip4cir stage must be one of {STAGES}, got {self.stage!r}")
        if self.encoder not in ENCODER_CHOICES:
            raise ValueError(f"clip4cir encoder must be one of {ENCODER_CHOICES}, got {self.encoder!r}")


class Combiner(nn.Module):
    """The CLIP4Cir Combiner (spec 2.5): projections, fusion MLP, dynamic scalar, residual mix.

    Attribute names follow the official checkpoint layout so released weights load.
    Inputs are raw (unnormalised) features (B, d); the output is normalised (B, d).
    """

    def __init__(self, dim: int, projection_dim: int, hidden_dim: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.text_projection_layer = nn.Linear(dim, projection_dim)
        self.image_projection_layer = nn.Linear(dim, projection_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.combiner_layer = nn.Linear(2 * projection_dim, hidden_dim)
        self.dropout3 = nn.Dropout(dropout)
        self.output_layer = nn.Linear(hidden_dim, dim)
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1),
            nn.Sigmoid(),
        )

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        text_proj = self.dropout1(torch.relu(self.text_projection_layer(text)))
        image_proj = self.dropout2(torch.relu(self.image_projection_layer(image)))
        joint = torch.cat([text_proj, image_proj], dim=-1)  # text first (official order)
        hidden = self.dropout3(torch.relu(self.combiner_layer(joint)))
        lam = self.dynamic_scalar(joint)  # one scalar per sample
        mixed = self.output_layer(hidden) + lam * text + (1 - lam) * image
        return normalize(mixed)


@METHODS.register("clip4cir")
class Clip4Cir(CIRMethod):
    """CLIP4Cir: stage ``finetune`` (sum composition) or stage ``combiner``."""

    name = "clip4cir"
    config_class = Clip4CirConfig
    official_quick_gelu = True  # OpenAI CLIP
    official_arch = "RN50x4"
    checkpoint_format = "clip4cir"

    def __init__(self, backbone: ClipBackbone, config: Clip4CirConfig) -> None:
        super().__init__(backbone, config)
        d = backbone.embed_dim
        self.combiner: Combiner | None = None
        if config.stage == "combiner":
            self.combiner = Combiner(d, config.projection_dim or 4 * d, config.hidden_dim or 8 * d, config.dropout)
            self.freeze_backbone(image=True, text=True)
        else:
            self.freeze_backbone(image=config.encoder == "text", text=config.encoder == "image")

    @property
    def requirements(self) -> Requirements:
        frozen = self.config.stage == "combiner"
        return Requirements(
            image_encoder_frozen=frozen or self.config.encoder == "text",
            text_encoder_frozen=frozen or self.config.encoder == "image",
            image_transform=self.config.image_transform,
            caption_policy="clip4cir",
        )

    def train(self, mode: bool = True) -> "Clip4Cir":
        super().train(mode)
        self.backbone.eval()  # CLIP4Cir keeps CLIP in eval() even while fine-tuning it
        return self

    def compose(self, reference: Features, text: Features) -> torch.Tensor:
        image, words = reference["pooled"].float(), text["pooled"].float()
        if self.combiner is None:
            return normalize(image + words)
        return self.combiner(image, words)

    def loss(self, batch: Mapping[str, Features]) -> dict[str, torch.Tensor]:
        query = self.compose(batch["reference"], batch["text"])
        target = self.embed_targets(batch["target"])
        query, target = batch_gather(batch)(query, target)  # the global batch under data parallelism
        out = self.contrastive_loss(query, target, self.config.logit_scale)
        return {**out.logs, "loss": out.loss, "contrastive": out.loss.detach()}

    # ----------------------------------------------------- official weights
    @classmethod
    def official_config(cls, paths: Sequence[str | Path]) -> dict[str, Any]:
        """``stage: combiner`` when one of the files holds a ``"Combiner"``."""
        holds = [read_official_checkpoint(p, "clip4cir") for p in paths]
        return {"stage": "combiner"} if any(isinstance(h, Mapping) and "Combiner" in h for h in holds) else {}

    def import_official(self, paths: Sequence[str | Path]) -> dict[str, Any]:
        """Stage-1 ``CLIP`` file and/or ``Combiner`` file; without a ``CLIP`` file the
        backbone must come from ``pretrained`` (CLIP4Cir's Combiner on the original CLIP)."""
        reports = super().import_official(paths)
        if not any("CLIP" in r for r in reports.values()) and not self.backbone.spec.pretrained:
            raise ValueError(
                "no official file holds the fine-tuned 'CLIP' weights and no --pretrained backbone was given; pass the "
                "stage-1 file (tuned_clip_*.pt) too, or --pretrained for the original CLIP"
            )
        return reports

    def load_official_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Load an official CLIP4Cir file: ``{"CLIP": state}`` (stage 1) or
        ``{"Combiner": state}`` (stage 2), read safely (``opencir.methods.official``).
        Returns a report of what was loaded."""
        state = read_official_checkpoint(path, "clip4cir")
        if not isinstance(state, Mapping) or not ({"CLIP", "Combiner"} & set(state)):
            found = describe_foreign_checkpoint(state, "clip4cir") if isinstance(state, Mapping) else f"found a {type(state).__name__}"
            raise ValueError(
                f"{path} is not a CLIP4Cir checkpoint: expected a key 'CLIP' (stage 1) or 'Combiner' (stage 2); {found}"
            )
        report: dict[str, Any] = {}
        if "CLIP" in state:
            result = self.backbone.model.load_state_dict(strip_module_prefix(state["CLIP"]), strict=False)
            report["CLIP"] = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
            if result.unexpected_keys or [k for k in result.missing_keys if k != "attn_mask"]:
                raise ValueError(f"{path}: 'CLIP' weights do not fit backbone {self.backbone.spec.arch!r}: {report['CLIP']}")
        if "Combiner" in state:
            if self.combiner is None:
                raise ValueError(f"{path} holds a Combiner but this model is stage {self.config.stage!r}; use stage=combiner")
            self.combiner.load_state_dict(strip_module_prefix(state["Combiner"]))
            report["Combiner"] = "loaded"
        match_official_activation(self, path)  # CLIP4Cir fine-tunes OpenAI CLIP: QuickGELU
        return report
