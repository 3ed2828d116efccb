"""Imports every built-in dataset module so that each registers itself."""
from __future__ import annotations

import importlib

BUILTIN_DATASET_MODULES = ["synthetic", "fashioniq", "cirr", "shoes", "fashion200k", "circo", "imagenet_r", "coco_composition", "corpora"]

for _module in BUILTIN_DATASET_MODULES:
    importlib.import_module(f"{__package__}.{_module}")
