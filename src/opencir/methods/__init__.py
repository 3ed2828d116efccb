"""Methods: one file per method, all registered in ``METHODS`` and built by name."""
from __future__ import annotations

from .base import METHODS, CIRMethod, Features, MethodConfig, Requirements
from .io import build_method, list_methods, load_backbone_weights, load_model, read_model_config, save_model

__all__ = [
    "METHODS",
    "CIRMethod",
    "Features",
    "MethodConfig",
    "Requirements",
    "build_method",
    "list_methods",
    "load_backbone_weights",
    "load_model",
    "read_model_config",
    "save_model",
]
