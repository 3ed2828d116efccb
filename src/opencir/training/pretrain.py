"""Contrastive image-caption pretraining of a small CLIP (the offline stand-in for
OpenAI/LAION weights): standard symmetric CLIP loss with CLIP's learnable temperature.

The result is exported as a plain open_clip state-dict file that
``BackboneSpec(arch, pretrained=<file>)`` loads like any local checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..methods.base import CIRMethod, Features, MethodConfig, Requirements, normalize


@dataclass
class ClipPretrainConfig(MethodConfig):
    image_transform: str = "clip"
    max_logit_scale: float = 100.0


class ClipPretrain(CIRMethod):
    """Image-caption CLIP training; composes queries as the sum baseline (for validation)."""

    name = "clip-pretrain"
    config_class = ClipPretrainConfig

    def __init__(self, backbone, config: ClipPretrainConfig) -> None:
        super().__init__(backbone, config)
        self.backbone.model.logit_scale.requires_grad_(True)

    @property
    def requirements(self) -> Requirements:
        return Requirements(train_data="images", image_transform=self.config.image_transform)

    def compose(self, reference: Features, text: Features) -> torch.Tensor:
        return normalize(reference["pooled"].float() + text["pooled"].float())

    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        image = normalize(batch["image"]["pooled"])
        text = normalize(self.encode_texts(batch["captions"])["pooled"])
        scale = self.backbone.model.logit_scale.exp().clamp(max=self.config.max_logit_scale)
        logits = scale * image @ text.t()
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.t(), labels))
        return {"loss": loss, "logit_scale": scale.detach()}

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        decay, no_decay = [], []
        for name, p in self.trainable_parameters():
            (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
        return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


def export_backbone_checkpoint(method: CIRMethod, path: str | Path) -> Path:
    """Save the backbone's open_clip state dict as a checkpoint file (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(method.backbone.model.state_dict(), tmp)
    tmp.replace(path)
    return path
