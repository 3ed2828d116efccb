"""Build, save and load method models as self-describing directories.

A model directory holds ``config.json`` (format version, method name + config, backbone
spec, and ``files``: size + SHA-256 of every weight file), ``model.safetensors`` and
``README.md`` (the model card, ``methods.card``). ``load_model(path)`` rebuilds the model
from the directory alone and verifies the recorded hashes first, so a damaged weight
file fails with an error naming it instead of loading silently.

Two layouts:

* **full** (format 1): ``model.safetensors`` holds every weight, backbone included;
* **lean** (format 2, written when ``save_model(..., backbone_store=DIR)`` is given and the
  backbone is frozen): ``model.safetensors`` holds only the non-backbone weights and
  ``config.json`` references one backbone file ``DIR/frozen-backbone/<fingerprint>.safetensors``
  (relative path, size, SHA-256). The backbone file is written and hashed once per run, so
  a save costs the trainable weights only. ``save_model`` without ``backbone_store``
  (``save_pretrained``, ``push_to_hub``) always writes a full, self-contained directory.
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
from .card import CARD_FILE, CardInfo, render_card
from ..hashing import file_record

FORMAT_VERSION = 2
"""Highest format this version reads; full directories are still written as format 1."""
FULL_FORMAT = 1
LEAN_FORMAT = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_STORE = "frozen-backbone"
BACKBONE_PREFIX = "backbone."
HASH_CHUNK = 1 << 22


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


# ----------------------------------------------------------------- hashing
def file_digest(path: str | Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file, read in 4 MiB chunks."""
    return file_record(path, HASH_CHUNK)


def verify_file(path: Path, recorded: Mapping[str, Any], what: str) -> None:
    """Refuse a missing, truncated or altered file (size first, then SHA-256)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is missing; re-download or re-save the model")
    size = path.stat().st_size
    if size != recorded["size"]:
        raise ValueError(f"{what} {path} is damaged: {size} bytes, {recorded['size']} recorded; "
                         f"re-download or re-save the model")
    actual = file_digest(path)["sha256"]
    if actual != recorded["sha256"]:
        raise ValueError(f"{what} {path} is damaged: SHA-256 {actual[:16]}... differs from the recorded "
                         f"{recorded['sha256'][:16]}...; re-download or re-save the model")


def verify_files(directory: str | Path, config: Mapping[str, Any] | None = None) -> None:
    """Check every weight file recorded in ``config.json`` (and a referenced backbone)."""
    directory = Path(directory)
    config = config if config is not None else read_model_config(directory)
    for name, recorded in (config.get("files") or {}).items():
        verify_file(directory / name, recorded, "weight file")
    reference = config.get("backbone_weights")
    if reference:
        path = directory / reference["path"]
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} is a lean checkpoint whose frozen backbone {path} is missing: keep the whole run "
                f"directory together, or write a self-contained copy with opencir.save_pretrained(model, DIR)")
        verify_file(path, reference, "backbone weight file")


# ------------------------------------------------------------------ saving
def backbone_is_frozen(method: CIRMethod) -> bool:
    """True when no backbone parameter receives gradients."""
    return not any(p.requires_grad for p in method.backbone.parameters())


def _trainable_state(method: CIRMethod) -> dict[str, torch.Tensor]:
    """Every non-backbone tensor of the state dict (own copies: safetensors refuses shared storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in method.state_dict().items()
            if not k.startswith(BACKBONE_PREFIX)}


def store_backbone(method: CIRMethod, store: str | Path) -> Path:
    """The backbone's weights as ``store/frozen-backbone/<fingerprint>.safetensors``, written
    (with a ``.sha256.json`` of its size and hash) only when not there yet."""
    from safetensors.torch import save_model as save_weights

    folder = Path(store) / BACKBONE_STORE
    path = folder / f"{method.backbone.fingerprint()}.safetensors"
    digest_file = path.with_name(path.name + ".sha256.json")
    if path.is_file() and digest_file.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_weights(method.backbone, str(tmp))
        digest = file_digest(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _write_json_atomic(digest_file, digest)
    return path


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save_model(method: CIRMethod, directory: str | Path, extra: Mapping[str, Any] | None = None, *,
               card: CardInfo | None = None, backbone_store: str | Path | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` + ``README.md`` atomically (temp dir,
    then rename). With ``backbone_store`` and a frozen backbone the directory is lean (see
    the module docstring); ``card`` fills the model card with what the run knows."""
    from safetensors.torch import save_file, save_model as save_weights

    from .. import __version__

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    lean = backbone_store is not None and backbone_is_frozen(method)
    config: dict[str, Any] = {
        "format_version": LEAN_FORMAT if lean else FULL_FORMAT,
        "method": method.name,
        "checkpoint_format": method.checkpoint_format or method.name,
        "method_config": method.config.to_dict(),
        "backbone": method.backbone.spec.to_dict(),
        "backbone_fingerprint": method.backbone.fingerprint(),
        "opencir_version": __version__,
        **dict(extra or {}),
    }
    if card is not None:
        config["card"] = card.to_dict()
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        if lean:
            backbone_file = store_backbone(method, backbone_store)
            reference = json.loads(backbone_file.with_name(backbone_file.name + ".sha256.json").read_text())
            relative = os.path.relpath(backbone_file.resolve(), directory.resolve())
            config["backbone_weights"] = {"path": Path(relative).as_posix(), **reference}
            save_file(_trainable_state(method), str(staging / WEIGHTS_FILE))
        else:
            save_weights(method, str(staging / WEIGHTS_FILE))
        config["files"] = {WEIGHTS_FILE: file_digest(staging / WEIGHTS_FILE)}
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        (staging / CARD_FILE).write_text(render_card(config, config["files"], card or CardInfo()))
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


# ----------------------------------------------------------------- loading
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


def load_weights_into(method: CIRMethod, directory: str | Path, verify: bool = True) -> dict[str, Any]:
    """Load a model directory's weights (full or lean) into an existing ``method`` of the
    same name; ``verify`` checks the recorded SHA-256 of every weight file first."""
    from safetensors.torch import load_file, load_model as load_weights

    directory = Path(directory)
    config = read_model_config(directory)
    if config["method"] != method.name:
        raise ValueError(f"{directory} holds a {config['method']!r} model, not a {method.name!r} model")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{directory}: {WEIGHTS_FILE} is missing")
    if verify:
        verify_files(directory, config)
    reference = config.get("backbone_weights")
    if reference:
        missing_b, unexpected_b = load_weights(method.backbone, str(directory / reference["path"]), strict=False)
        own = load_file(str(weights))
        missing, unexpected = method.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.startswith(BACKBONE_PREFIX)] + [BACKBONE_PREFIX + k for k in missing_b]
        unexpected = list(unexpected) + [BACKBONE_PREFIX + k for k in unexpected_b]
    else:
        missing, unexpected = load_weights(method, str(weights), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match a {config['method']!r} model with config {config['method_config']}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return config


def load_model(directory: str | Path, expected_method: str | None = None, device: str | torch.device = "cpu",
               verify: bool = True) -> CIRMethod:
    """Rebuild a saved model; ``expected_method`` refuses a checkpoint of another method;
    ``verify`` checks the weight files' recorded SHA-256 (see ``verify_files``)."""
    from ..devices import resolve_device

    device = resolve_device(device)  # cuda without CUDA: one clear line before any work
    config = read_model_config(directory)
    if expected_method is not None and config["method"] != expected_method:
        raise ValueError(
            f"{directory} holds a {config['method']!r} model, not a {expected_method!r} model"
        )
    spec = BackboneSpec(**config["backbone"])
    backbone = ClipBackbone(spec, load_weights=False)  # weights come from the directory
    method = build_method(config["method"], backbone, config["method_config"])
    load_weights_into(method, directory, verify=verify)
    # what save_pretrained / push_to_hub of this model write again (the card of its run)
    method.card_info = CardInfo.from_dict(config.get("card"))
    method.saved_extra = {k: config[k] for k in ("epoch", "select_score") if k in config}
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
