"""Training-free baselines on a CLIP backbone: image-only, text-only and sum.

All use raw pooled CLIP features and normalise the result: image-only = norm(x_r),
text-only = norm(x_T), sum = norm(x_r + x_T) (CLIP4Cir's stage-1 composition).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import METHODS, CIRMethod, Features, MethodConfig, Requirements, normalize


@dataclass
class BaselineConfig(MethodConfig):
    """Baselines have no hyper-parameters beyond the preprocessing."""

    image_transform: str = "clip"


class _Baseline(CIRMethod):
    config_class = BaselineConfig

    @property
    def requirements(self) -> Requirements:
        return Requirements(image_encoder_frozen=True, text_encoder_frozen=True, image_transform=self.config.image_transform)


@METHODS.register("image-only")
class ImageOnly(_Baseline):
    """Query = the normalised reference image feature (ignores the text)."""

    name = "image-only"

    def compose(self, reference: Features, text: Features) -> torch.Tensor:
        return normalize(reference["pooled"])


@METHODS.register("text-only")
class TextOnly(_Baseline):
    """Query = the normalised modification-text feature (ignores the image)."""

    name = "text-only"

    def compose(self, reference: Features, text: Features) -> torch.Tensor:
        return normalize(text["pooled"])


@METHODS.register("sum")
class Sum(_Baseline):
    """Query = norm(x_r + x_T) on raw features."""

    name = "sum"

    def compose(self, reference: Features, text: Features) -> torch.Tensor:
        return normalize(reference["pooled"].float() + text["pooled"].float())
