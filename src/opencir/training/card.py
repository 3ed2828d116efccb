"""What a training run writes into the model card of each ``best``/``last`` save."""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Mapping

from ..methods.card import CardInfo
from ..methods.hub import HF_HUB_PREFIX
from .config import config_to_dict

if TYPE_CHECKING:
    from ..data.types import CIRDataset
    from .config import RunConfig


def gallery_convention(dataset: "CIRDataset") -> dict[str, Any]:
    """How the benchmark's gallery is built and ranked: size, reference excluded, option."""
    parts = dataset.evaluation_parts()
    convention: dict[str, Any] = {"gallery images": sum(len(p.gallery_ids) for p in parts.values())}
    protocols = [p.protocol for p in parts.values() if p.protocol is not None]
    if protocols:
        convention["reference excluded"] = all(getattr(p, "exclude_reference", False) for p in protocols)
    if "gallery" in dataset.info:
        convention["gallery option"] = dataset.info["gallery"]
    if len(parts) > 1:
        convention["parts"] = ", ".join(parts)
    return convention


PATH_FIELDS = {("dataset", "root"): 1, ("backbone", "pretrained"): 1, ("init_from",): 2}
"""Config fields that may hold a local path, and how many trailing components the card
keeps (``init_from`` keeps two: ``stage1/best`` says which run, ``best`` alone does not)."""


def _is_local_path(value: Any) -> bool:
    return isinstance(value, str) and not value.startswith(HF_HUB_PREFIX) and ("/" in value or "\\" in value)


def without_local_paths(training: Mapping[str, Any]) -> dict[str, Any]:
    """The card's copy of the config with local paths cut to their last components
    (``/home/me/data/cirr`` -> ``cirr``, ``/home/me/runs/stage1/best`` -> ``stage1/best``):
    a card is meant to be published, a path is private."""
    public = {k: dict(v) if isinstance(v, Mapping) else v for k, v in training.items()}
    for (*parents, key), keep in PATH_FIELDS.items():
        holder: Any = public
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and _is_local_path(holder.get(key)):
            parts = [part for part in PurePosixPath(holder[key].replace("\\", "/")).parts if part != "/"]
            holder[key] = "/".join(parts[-keep:])
    return public


def run_card(config: "RunConfig", dataset: "CIRDataset | None", metrics: Mapping[str, float] | None,
             training_seconds: float | None) -> CardInfo:
    """A model card filled from the run: config, validation dataset, metrics and time."""
    resolved = config_to_dict(config)
    training = without_local_paths(
        {k: resolved[k] for k in ("method_config", "backbone", "dataset", "train", "init_from") if k in resolved})
    return CardInfo(
        dataset=dataset.name if dataset is not None else config.dataset.name,
        split=dataset.split if dataset is not None else None,
        gallery=gallery_convention(dataset) if dataset is not None else {},
        metrics={k: float(v) for k, v in (metrics or {}).items()},
        training_seconds=training_seconds,
        training_config=training,
        recipe=getattr(config, "recipe", None),
    )
