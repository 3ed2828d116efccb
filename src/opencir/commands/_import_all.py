"""Imports every built-in command module so that each registers itself."""
from __future__ import annotations

import importlib

BUILTIN_COMMAND_MODULES: list[str] = ["train", "eval", "pretrain_clip", "demo", "data_synth", "masks", "mask_captions", "data_check", "eval_rankings", "compare", "report", "submission", "index", "search", "serve", "import_checkpoint", "encode", "export"]

for _module in BUILTIN_COMMAND_MODULES:
    importlib.import_module(f"{__package__}.{_module}")
