"""Build, save and load method models as self-describing directories.

A model directory holds ``config.json`` (format version, method name + config, backbone
spec) and ``model.safetensors`` (every weight, backbone included). ``load_model(path)``
rebuilds the model from the directory alone.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..backbones import BackboneSpec, ClipBackbone
from .base import METHODS, CIRMethod

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def list_methods() -> list[str]:
    """Names of every registered method."""
    from . import _import_all  # noqa: F401

    return METHODS.names()


def build_method(name: str, backbone: BackboneSpec | ClipBackbone, config: Mapping[str, Any] | None = None) -> CIRMethod:
    """Instantiate the registered method ``name`` on a backbone with config overrides."""
    from . import _import_all  # noqa: F401

    cls = METHODS.get(name)
    method_config = cls.config_class.from_dict(dict(config or {}))
    if isinstance(backbone, BackboneSpec):
        backbone = ClipBackbone(backbone)
    return cls(backbone, method_config)


def save_model(method: CIRMethod, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (temp dir, then rename)."""
    from safetensors.torch import save_model as save_weights

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "method": method.name,
        "checkpoint_format": method.checkpoint_format or method.name,
        "method_config": method.config.to_dict(),
        "backbone": method.backbone.spec.to_dict(),
        "backbone_fingerprint": method.backbone.fingerprint(),
        **dict(extra or {}),
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_weights(method, str(staging / WEIGHTS_FILE))
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        if directory.exists():
            backup = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(directory, backup)
            os.replace(staging, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a model directory, with clear errors."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an OpenCIR model directory: {CONFIG_FILE} is missing")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    for key in ("format_version", "method", "method_config", "backbone"):
        if key not in config:
            raise ValueError(f"{path} has no {key!r} field; is it an OpenCIR model directory?")
    if config["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {config['format_version']}; this OpenCIR reads <= {FORMAT_VERSION}")
    return config


def load_weights_into(method: CIRMethod, directory: str | Path) -> dict[str, Any]:
    """Load a model directory's weights into an existing ``method`` of the same name."""
    from safetensors.torch import load_model as load_weights

    config = read_model_config(directory)
    if config["method"] != method.name:
        raise ValueError(f"{directory} holds a {config['method']!r} model, not a {method.name!r} model")
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{directory}: {WEIGHTS_FILE} is missing")
    missing, unexpected = load_weights(method, str(weights), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match a {config['method']!r} model with config {config['method_config']}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return config


def load_model(directory: str | Path, expected_method: str | None = None, device: str | torch.device = "cpu") -> CIRMethod:
    """Rebuild a saved model; ``expected_method`` refuses a checkpoint of another method."""
    config = read_model_config(directory)
    if expected_method is not None and config["method"] != expected_method:
        raise ValueError(
            f"{directory} holds a {config['method']!r} model, not a {expected_method!r} model"
        )
    spec = BackboneSpec(**{**config["backbone"], "pretrained": None})  # weights come from the file
    method = build_method(config["method"], spec, config["method_config"])
    load_weights_into(method, directory)
    method.backbone.spec = BackboneSpec(**config["backbone"])
    return method.to(device).eval()


def load_backbone_weights(method: CIRMethod, directory: str | Path) -> None:
    """Initialise ``method``'s backbone from a saved model of the same method (e.g. CLIP4Cir
    stage 1 for stage 2); a checkpoint of another method is refused."""
    source = load_model(directory, expected_method=method.name)
    if source.backbone.spec.arch != method.backbone.spec.arch:
        raise ValueError(
            f"{directory} has backbone {source.backbone.spec.arch!r}, this model uses {method.backbone.spec.arch!r}"
        )
    method.backbone.load_state_dict(source.backbone.state_dict())
