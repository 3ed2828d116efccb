"""Export a model's gallery and query towers to ONNX or TorchScript.

Two graphs, both ending in L2-normalised float32 (B, D) vectors equal to what
``model.encode_gallery`` / ``encode_queries`` return (and ``opencir index`` stores):

* ``gallery.{onnx,pt}``: ``pixels`` (B, 3, S, S) [+ ``masks`` for mask methods] -> vectors;
* ``query.{onnx,pt}``: ``pixels`` (B, 3, S, S) + ``token_ids`` (B, L) int64 -> vectors.

Preprocessing and tokenisation stay outside the graphs (as for open_clip's exports):
``export.json`` records the transform name, size, mean and std, and the tokenizer (the
open_clip tokenizer of the backbone, context length L); ``model.preprocess`` and
``model.backbone.tokenize`` produce the inputs. The query graph exists for methods whose
text features are the pooled text tower of the token ids (``clip4cir`` and the baselines);
methods that build prompts or pseudo-word tokens in Python refuse it with a clear error.
Exports run on the CPU in float32 and are checked against the eager model before they
are kept (the largest difference is recorded in ``export.json``).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .methods.base import CIRMethod
from .methods.encoder import describe_preprocess
from .registry import Registry

FORMATS: Registry["ExportFormat"] = Registry("export format")
MANIFEST = "export.json"
TOLERANCE = 1e-4
"""Largest absolute difference allowed between exported and eager vectors (float32 kernels differ)."""


class GalleryTower(nn.Module):
    """pixels [, masks] -> normalised gallery vectors."""

    def __init__(self, method: CIRMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return self.method.embed_targets(self.method.encode_images(pixels, masks))


class QueryTower(nn.Module):
    """pixels, token_ids [, masks] -> normalised composed query vectors."""

    def __init__(self, method: CIRMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, pixels: torch.Tensor, token_ids: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        reference = self.method.encode_images(pixels, masks)
        # open_clip's own text tower over the full context: ``ClipBackbone.encode_text`` trims
        # padding by a data-dependent length, which a traced graph would freeze
        return self.method.compose(reference, {"pooled": self.method.backbone.model.encode_text(token_ids)})


def query_tower_supported(method: CIRMethod) -> bool:
    """Whether the method's text features are the plain pooled text tower of token ids."""
    return type(method).encode_texts is CIRMethod.encode_texts


def _sample_inputs(method: CIRMethod, batch: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = method.backbone.image_size
    inputs = {"pixels": torch.randn(batch, 3, size, size, generator=generator)}
    if method.requirements.needs_masks:
        inputs["masks"] = torch.randn(batch, 3, size, size, generator=generator)
    return inputs


def _towers(method: CIRMethod, batch: int) -> dict[str, tuple[nn.Module, dict[str, torch.Tensor]]]:
    images = _sample_inputs(method, batch)
    towers: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]] = {"gallery": (GalleryTower(method).eval(), images)}
    if query_tower_supported(method):
        texts = [f"sample text {i}" + " longer" * i for i in range(batch)]
        token_ids = method.backbone.tokenize(texts).long()
        towers["query"] = (QueryTower(method).eval(), {"pixels": images["pixels"], "token_ids": token_ids,
                                                **({"masks": images["masks"]} if "masks" in images else {})})
    return towers


@dataclass(frozen=True)
class ExportFormat:
    """How to write a tower to a file and run the written file again."""

    suffix: str
    save: Callable[[nn.Module, dict[str, torch.Tensor], Path, int], None]
    run: Callable[[Path, dict[str, torch.Tensor]], np.ndarray]


def _save_onnx(tower: nn.Module, inputs: dict[str, torch.Tensor], path: Path, opset: int) -> None:
    """torch.export-based exporter (onnxscript) with a dynamic batch dimension. (The legacy
    TorchScript exporter mis-exports open_clip's masked text attention: 0.1 off.)"""
    names = list(inputs)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tower, tuple(inputs.values()), str(path), dynamo=True, opset_version=opset,
                          input_names=names, output_names=["vectors"], external_data=False,
                          dynamic_shapes=tuple({0: batch} for _ in names), verbose=False)


def _run_onnx(path: Path, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("checking an ONNX export needs onnxruntime: pip install 'opencir[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {n: t.numpy() for n, t in inputs.items()})[0]


def _save_torchscript(tower: nn.Module, inputs: dict[str, torch.Tensor], path: Path, opset: int) -> None:
    del opset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(tower, tuple(inputs.values()), check_trace=False)
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(*inputs.values()).numpy()


FORMATS.register("onnx")(ExportFormat(".onnx", _save_onnx, _run_onnx))
FORMATS.register("torchscript")(ExportFormat(".pt", _save_torchscript, _run_torchscript))


def _eager(tower: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return tower(*inputs.values()).numpy()


def export_model(method: CIRMethod, out_dir: str | Path, format: str = "onnx", opset: int = 18,
                 towers: tuple[str, ...] = ("gallery", "query")) -> dict[str, Any]:
    """Export the gallery and (where supported) query towers of ``method`` to ``out_dir``;
    returns the manifest written as ``export.json``. Each graph is checked against the eager
    model on sample inputs of two batch sizes (dynamic batch) before it is kept."""
    exporter = FORMATS.get(format)
    if format == "onnx":
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs onnx and onnxscript)
            import onnxscript  # noqa: F401
        except ImportError:
            raise ImportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'opencir[export]'") from None
    unknown = sorted(set(towers) - {"gallery", "query"})
    if unknown:
        raise ValueError(f"unknown towers {unknown}; choose from gallery, query")
    skipped: dict[str, str] = {}
    if "query" in towers and not query_tower_supported(method):
        reason = (f"method {method.name!r} builds its text input in Python (prompts or pseudo words): "
                  f"only its gallery tower can be exported")
        if towers == ("query",):
            raise ValueError(reason)
        towers = tuple(t for t in towers if t != "query")
        skipped["query"] = reason
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training, device = method.training, next(method.parameters()).device
    method.float().cpu().eval()
    files: dict[str, Any] = {}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX op
    try:
        for name, (tower, inputs) in _towers(method, 2).items():
            if name not in towers:
                continue
            path = out / f"{name}{exporter.suffix}"
            exporter.save(tower, inputs, path, opset)
            # checked at the traced batch size and another one (the batch dimension is dynamic)
            difference = max(float(np.abs(exporter.run(path, sample) - _eager(tower, sample)).max())
                             for sample in (inputs, _towers(method, 3)[name][1]))
            if difference > TOLERANCE:
                path.unlink(missing_ok=True)
                raise ValueError(f"the exported {name} tower of {method.name!r} differs from the model by "
                                 f"{difference:.2e} (> {TOLERANCE}); not kept")
            files[name] = {"file": path.name, "inputs": list(inputs), "max_abs_difference": difference}
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        method.to(device).train(was_training)
    from . import __version__

    manifest = {
        "format": format, "method": method.name, "opencir_version": __version__,
        "embed_dim": method.backbone.embed_dim, "preprocess": describe_preprocess(method),
        "tokenizer": {"open_clip_model": method.backbone.spec.arch, "context_length": method.backbone.context_length},
        "towers": files,
        **({"skipped": skipped} if skipped else {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest

