"""Backbones: the CLIP wrapper (open_clip) with pooled and token-level features."""
from __future__ import annotations

from .clip import BackboneSpec, ClipBackbone, ImageTokens, TextTokens, list_small_configs

__all__ = ["BackboneSpec", "ClipBackbone", "ImageTokens", "TextTokens", "list_small_configs"]
