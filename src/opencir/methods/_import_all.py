"""Imports every built-in method module so that each registers itself."""
from __future__ import annotations

import importlib

BUILTIN_METHOD_MODULES = ["baselines", "clip4cir", "tgcir", "nsfse", "offset", "pic2word", "context_i2w"]

for _module in BUILTIN_METHOD_MODULES:
    importlib.import_module(f"{__package__}.{_module}")
