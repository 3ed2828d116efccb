"""The functions behind ``opencir.create_model`` / ``load_model`` / ``evaluate``: names in,
objects out, the way open_clip and timm users expect them."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

if TYPE_CHECKING:
    from .backbones.clip import BackboneSpec, ClipBackbone
    from .data.types import CIRDataset
    from .evaluation.evaluator import EvalResult
    from .methods.base import CIRMethod


def list_backbones() -> list[str]:
    """Backbone names ``create_model`` accepts without a path: the small shipped configs and
    every open_clip ``ARCH/TAG`` pair (``hf-hub:org/name`` works as well)."""
    import open_clip

    from .backbones.clip import list_small_configs

    return [*list_small_configs(), *(f"{arch}/{tag}" for arch, tag in open_clip.list_pretrained())]


def _device(device: str | torch.device | None) -> torch.device | None:
    if device is None or isinstance(device, torch.device):
        return device
    from .training.trainer import resolve_device

    return resolve_device(device)


def create_model(method: str, backbone: "str | BackboneSpec | ClipBackbone" = "ViT-B-16/openai",
                 config: Mapping[str, Any] | None = None, *, pretrained: str | None = None,
                 device: str | torch.device = "cpu") -> "CIRMethod":
    """A new ``method`` on a backbone given by name: ``"ViT-B-16/openai"`` (ARCH/TAG),
    ``"hf-hub:org/name"``, ``"tiny-vit"`` (random init), or a ``BackboneSpec``; ``pretrained``
    is a tag or a checkpoint path for a bare architecture name. ``config`` overrides the
    method's defaults. Returned in eval mode on ``device``."""
    from .backbones.clip import BackboneSpec
    from .methods.io import build_method

    if isinstance(backbone, str):
        backbone = BackboneSpec(backbone, pretrained)
    elif pretrained is not None:
        raise ValueError("pretrained= applies to a backbone given by name only")
    return build_method(method, backbone, config).to(_device(device)).eval()


def load_model(name_or_path: str | Path, *, device: str | torch.device = "cpu", expected_method: str | None = None,
               revision: str | None = None, token: str | bool | None = None, cache_dir: str | Path | None = None,
               local_files_only: bool = False) -> "CIRMethod":
    """A saved model: a directory (``runs/x/best``) or ``hf-hub:org/name`` (``revision`` a
    branch, tag or commit; ``token`` for private repos; ``HF_HUB_OFFLINE=1`` reads the cache
    only). The weight files' SHA-256 recorded at save time are verified."""
    from .methods.hub import load_model as load

    return load(name_or_path, device=_device(device), expected_method=expected_method, revision=revision,
                token=token, cache_dir=cache_dir, local_files_only=local_files_only)


def evaluate(model: "CIRMethod | str | Path", dataset: "CIRDataset | str", root: str | Path | None = None,
             split: str = "test", *, batch_size: int = 64, device: str | torch.device | None = None,
             cache_dir: str | Path | None = None, keep_rankings: bool = False, **options: Any) -> "EvalResult":
    """Official metrics of ``model`` (a model, a directory or ``hf-hub:`` name) on ``dataset``
    (a ``CIRDataset``, or a registered name read from ``root`` with ``split`` and dataset
    ``options``). Returns ``EvalResult`` (``.metrics`` in percent, rankings when kept)."""
    from .data.registry import load_dataset
    from .evaluation.evaluator import evaluate as run

    if isinstance(model, (str, Path)):
        model = load_model(model, device=device or "cpu")
    if isinstance(dataset, str):
        if root is None:
            raise ValueError(f"give root= (the folder holding {dataset!r}) to evaluate on a dataset by name")
        dataset = load_dataset(dataset, root, split, **options)
    elif options or root is not None:
        raise ValueError("root= and dataset options apply to a dataset given by name only")
    target = _device(device) or next(model.parameters()).device
    return run(model.to(target), dataset, batch_size, target, cache_dir, keep_rankings=keep_rankings)
