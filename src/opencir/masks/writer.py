"""Mask files: 8-bit soft masks written atomically, and the caption -> segment pipeline.

``plan_masks`` lists each distinct mask file a set of dataset splits needs;
``write_masks`` captions and segments the images whose mask is not written yet (so an
interrupted run resumes where it stopped) and reports unreadable images instead of
stopping at the first one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import ImageLoadError, load_image
from ..data.types import CIRDataset, ImageRecord
from .captioners import Captioner
from .layouts import mask_path_for
from .segmenters import Segmenter

MASK_MODES = ("L", "LA", "RGB", "RGBA", "P", "I", "I;16")
"""PIL modes accepted as a mask file (official masks are 8-bit grayscale, read as RGB)."""


@dataclass(frozen=True)
class MaskJob:
    """One mask file to produce: the image it belongs to and where it goes."""

    record: ImageRecord
    mask_path: Path
    root: Path

    @property
    def relative(self) -> Path | None:
        """``mask_path`` relative to the dataset root (None when outside it)."""
        try:
            return self.mask_path.relative_to(self.root)
        except ValueError:
            return None


@dataclass(frozen=True)
class MaskFailure:
    """An image (or released mask) that could not be used, and why."""

    image_id: str
    path: Path
    reason: str


@dataclass
class MaskReport:
    """What a mask run did: files written, files already there, failures, captions used."""

    written: int = 0
    skipped: int = 0
    failures: list[MaskFailure] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)

    def summary(self, examples: int = 20) -> str:
        lines = [f"{self.written} masks written, {self.skipped} already present, {len(self.failures)} failed"]
        for failure in self.failures[:examples]:
            lines.append(f"  {failure.image_id}: {failure.path}: {failure.reason}")
        if len(self.failures) > examples:
            lines.append(f"  ... and {len(self.failures) - examples} more")
        return "\n".join(lines)


def plan_masks(datasets: Sequence[CIRDataset]) -> list[MaskJob]:
    """One job per distinct mask file of every image of ``datasets`` (sorted by mask path)."""
    jobs: dict[Path, MaskJob] = {}
    for dataset in datasets:
        for part in [*dataset.parts.values(), dataset]:  # parts first: they know their category
            for image_id in sorted(part.images):
                record = part.images[image_id]
                path = mask_path_for(part, record)
                jobs.setdefault(path, MaskJob(record, path, part.root))
    return sorted(jobs.values(), key=lambda job: str(job.mask_path))


def mask_to_image(mask: torch.Tensor) -> Image.Image:
    """(H, W) values in [0, 1] -> 8-bit grayscale image of floor(255 m), as official."""
    if mask.dim() != 2:
        raise ValueError(f"a mask must be (H, W), got shape {tuple(mask.shape)}")
    values = (mask.detach().float().clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    return Image.fromarray(values, mode="L")


def save_mask(mask: torch.Tensor | Image.Image, path: str | Path) -> Path:
    """Write a mask atomically (temp file + rename); the format follows the suffix
    (PNG is lossless; the official Shoes naming is ``.jpg``, saved at quality 95)."""
    path = Path(path)
    image = mask if isinstance(mask, Image.Image) else mask_to_image(mask)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    options = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    image.save(tmp, **options)
    os.replace(tmp, path)
    return path


def read_mask(path: str | Path) -> torch.Tensor:
    """A mask file as (H, W) float values in [0, 1]; ImageLoadError names a bad file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
    except (OSError, ValueError) as err:
        raise ImageLoadError(f"cannot read mask {path}: {err}") from err
    if mode not in MASK_MODES:
        raise ImageLoadError(f"{path} is not a mask image: PIL mode {mode!r} (expected one of {MASK_MODES})")
    gray = load_image(path, mode="L")
    if min(gray.size) < 1:
        raise ImageLoadError(f"{path} is an empty image")
    return torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)


def _chunks(items: Sequence[MaskJob], size: int) -> Iterator[Sequence[MaskJob]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def write_masks(
    jobs: Sequence[MaskJob],
    captioner: Captioner,
    segmenter: Segmenter,
    batch_size: int = 8,
    overwrite: bool = False,
    resize_to_image: bool = False,
    progress: bool = True,
) -> MaskReport:
    """Caption and segment every job whose mask file is missing (all with ``overwrite``).

    Masks keep the segmenter's output size (352 x 352 for CLIPSeg, as released) unless
    ``resize_to_image``. Unreadable images are recorded in the report, not raised.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    report = MaskReport()
    pending = [job for job in jobs if overwrite or not job.mask_path.is_file()]
    report.skipped = len(jobs) - len(pending)
    with tqdm(total=len(pending), desc="masks", unit="image", disable=not progress or None) as bar:
        for chunk in _chunks(pending, batch_size):
            loaded: list[tuple[MaskJob, Image.Image]] = []
            for job in chunk:
                try:
                    loaded.append((job, load_image(job.record.path)))
                except ImageLoadError as err:
                    report.failures.append(MaskFailure(job.record.image_id, job.record.path, str(err)))
            if loaded:
                images = [image for _, image in loaded]
                captions = captioner(images, [job.record for job, _ in loaded])
                masks = segmenter(images, captions)
                if len(captions) != len(images) or masks.dim() != 3 or masks.shape[0] != len(images):
                    raise ValueError(f"{len(images)} images gave {len(captions)} captions and masks of shape "
                                     f"{tuple(masks.shape)}; expected one caption and one (H, W) mask per image")
                for (job, image), caption, mask in zip(loaded, captions, masks):
                    if resize_to_image:
                        mask = torch.nn.functional.interpolate(mask[None, None], size=image.size[::-1],
                                                               mode="bilinear", align_corners=False)[0, 0]
                    save_mask(mask, job.mask_path)
                    report.captions[job.record.image_id] = caption
                    report.written += 1
            bar.update(len(chunk))
    return report
