"""Dominant-portion masks for OFFSET (spec 5.2): caption each image, segment what the
caption names, store soft 8-bit masks under the official file names; or adopt the
officially released masks. Run once per dataset with ``opencir masks``."""
from __future__ import annotations

from .captioners import CAPTIONERS, MaskModelError, build_captioner
from .layouts import MASK_LAYOUTS, mask_path_for, official_mask_path, require_mask_file, with_mask_paths
from .released import import_released
from .segmenters import SEGMENTERS, build_segmenter
from .writer import MaskFailure, MaskJob, MaskReport, mask_to_image, plan_masks, read_mask, save_mask, write_masks

__all__ = [
    "CAPTIONERS",
    "MASK_LAYOUTS",
    "SEGMENTERS",
    "MaskFailure",
    "MaskJob",
    "MaskModelError",
    "MaskReport",
    "build_captioner",
    "build_segmenter",
    "import_released",
    "mask_path_for",
    "mask_to_image",
    "official_mask_path",
    "plan_masks",
    "read_mask",
    "require_mask_file",
    "save_mask",
    "with_mask_paths",
]
