"""Plain data types shared by every benchmark: triplets, image records, datasets, protocols."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence


ZERO_SHOT_PROMPT_KEY = "zero_shot_prompt"
"""Key of ``CIRDataset.info`` / ``Triplet.extra`` holding a zero-shot prompt template with
``{placeholder}`` and ``{text}`` slots (read by the pseudo-word methods)."""


@dataclass(frozen=True)
class Triplet:
    """One CIR query: a reference image, its modification text(s) and the ground truth.

    ``captions`` keeps the raw texts as the benchmark ships them (FashionIQ has two);
    a caption policy (``opencir.data.captions``) turns them into the query text.
    ``target_ids`` is empty on hidden test splits and may hold several ids (CIRCO).
    ``subset_ids`` holds CIRR's ``img_set.members`` (reference included) or is empty.
    """

    query_id: str
    reference_id: str
    captions: tuple[str, ...]
    target_ids: tuple[str, ...] = ()
    subset_ids: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def target_id(self) -> str:
        """The single (first) ground-truth id; fails on hidden test queries."""
        if not self.target_ids:
            raise ValueError(f"query {self.query_id!r} has no target (hidden test split?)")
        return self.target_ids[0]


@dataclass(frozen=True)
class ImageRecord:
    """An image the split refers to: id, absolute path, optional image-level caption."""

    image_id: str
    path: Path
    caption: str | None = None
    mask_path: Path | None = None


class EvalProtocol(Protocol):
    """Official metrics of one benchmark split, computed from ranked gallery ids."""

    ranking_depth: int
    """How many ranked ids per query the metrics need (e.g. 50)."""
    exclude_reference: bool
    """Whether the query's reference image is removed from its ranking first."""
    uses_subsets: bool
    """Whether metrics also need rankings restricted to ``Triplet.subset_ids`` (CIRR)."""

    def evaluate(
        self,
        triplets: Sequence[Triplet],
        rankings: Mapping[str, Sequence[str]],
        subset_rankings: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, float]:
        """Metrics in percent, keyed like ``"R@10"``; rankings are keyed by query id."""
        ...


@dataclass
class CIRDataset:
    """One split of a CIR benchmark, read from its official layout under ``root``.

    ``images`` maps every id the split mentions to its record; ``gallery_ids`` is the
    ordered gallery the protocol ranks; ``caption_policy`` names the default policy
    (see ``opencir.data.captions``) used to turn ``Triplet.captions`` into one text.
    ``parts`` splits evaluation into named sub-datasets (FashionIQ categories) whose
    metrics ``aggregate`` combines; a plain dataset is its own single part.
    """

    name: str
    split: str
    root: Path
    triplets: list[Triplet]
    images: dict[str, ImageRecord]
    gallery_ids: list[str]
    protocol: EvalProtocol | None
    caption_policy: str = "first"
    parts: dict[str, "CIRDataset"] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def image_path(self, image_id: str) -> Path:
        """Absolute path of ``image_id``; a clear error names the id and the split."""
        try:
            return self.images[image_id].path
        except KeyError:
            raise KeyError(f"{self.name}/{self.split}: image id {image_id!r} is not in this split") from None

    def evaluation_parts(self) -> dict[str, "CIRDataset"]:
        """The sub-datasets evaluated separately (``{"": self}`` when not split)."""
        return self.parts or {"": self}
