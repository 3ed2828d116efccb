"""Text-prompted segmenters: soft masks of the part of an image a caption names.

A segmenter is ``(images: list[PIL.Image], prompts: list[str]) -> Tensor (B, H, W)`` with
values in [0, 1] (float32, CPU). ``SEGMENTERS`` maps a name to a factory
``(model, device) -> Segmenter``:

* ``clipseg``: CLIPSeg from ``transformers`` (``model``: a hub name, default
  ``CIDAS/clipseg-rd64-refined``, or a local folder with the model and its processor).
  As in the official generation code (spec 5.2) the mask is sigmoid(logits) at the
  model's output size (352 x 352 for the released CLIPSeg).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image

from ..registry import Registry
from .captioners import _load_error, require_transformers

Segmenter = Callable[[Sequence[Image.Image], Sequence[str]], torch.Tensor]
SegmenterFactory = Callable[[str | None, str], Segmenter]
SEGMENTERS: Registry[SegmenterFactory] = Registry("segmenter")

DEFAULT_CLIPSEG = "CIDAS/clipseg-rd64-refined"


class ClipSegSegmenter:
    """CLIPSeg (``CLIPSegForImageSegmentation`` + its ``CLIPSegProcessor``)."""

    def __init__(self, model, processor, device: str = "cpu") -> None:
        self.model, self.processor, self.device = model.to(device).eval(), processor, device

    @classmethod
    def from_pretrained(cls, name: str, device: str = "cpu") -> "ClipSegSegmenter":
        require_transformers("CLIPSeg segmenter")
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        try:
            processor = CLIPSegProcessor.from_pretrained(name)
            model = CLIPSegForImageSegmentation.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise _load_error("segmentation", name, err) from err
        return cls(model, processor, device)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        inputs = self.processor(text=list(prompts), images=list(images), padding="max_length",
                                truncation=True, return_tensors="pt").to(self.device)
        logits = self.model(**inputs).logits
        if logits.dim() == 2:  # transformers squeezes a batch of one
            logits = logits[None]
        return torch.sigmoid(logits.float()).cpu()


@SEGMENTERS.register("clipseg")
def clipseg_segmenter(model: str | None = None, device: str = "cpu") -> Segmenter:
    """CLIPSeg from ``transformers`` (default ``CIDAS/clipseg-rd64-refined``)."""
    return ClipSegSegmenter.from_pretrained(model or DEFAULT_CLIPSEG, device)


def build_segmenter(name: str, model: str | None = None, device: str = "cpu") -> Segmenter:
    """The registered segmenter ``name``."""
    return SEGMENTERS.get(name)(model, device)
