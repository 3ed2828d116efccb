"""Text processing for zero-shot CIR: masking the subject noun phrase of captions."""
from __future__ import annotations

from .masking import MASKERS, PLACEHOLDER, CaptionMasker, build_masker, mask_captions

__all__ = ["MASKERS", "PLACEHOLDER", "CaptionMasker", "build_masker", "mask_captions"]
