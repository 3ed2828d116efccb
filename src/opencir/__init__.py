"""OpenCIR: composed image retrieval methods, benchmarks, indexing and serving.

The top level is flat and lazy: ``import opencir`` loads nothing heavy (no torch); each
name below is imported on first use.

>>> import opencir
>>> opencir.list_methods()                                   # ['clip4cir', 'context-i2w', ...]
>>> model = opencir.create_model("sum", "ViT-B-16/openai")   # method + backbone by name
>>> model = opencir.load_model("runs/x/best")                # or "hf-hub:org/name"
>>> vectors = model.encode_gallery(["a.jpg", "b.jpg"])       # (2, D) float32, L2-normalised
>>> result = opencir.evaluate(model, "cirr", root="data/cirr", split="val")
"""
from __future__ import annotations

from importlib import import_module as _import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, str]] = {
    "list_methods": ("opencir.methods.io", "list_methods"),
    "list_datasets": ("opencir.data.registry", "list_datasets"),
    "list_recipes": ("opencir.recipes", "list_recipes"),
    "list_backbones": ("opencir.api", "list_backbones"),
    "create_model": ("opencir.api", "create_model"),
    "load_model": ("opencir.api", "load_model"),
    "load_dataset": ("opencir.data.registry", "load_dataset"),
    "evaluate": ("opencir.api", "evaluate"),
    "save_pretrained": ("opencir.methods.hub", "save_pretrained"),
    "push_to_hub": ("opencir.methods.hub", "push_to_hub"),
    "Retriever": ("opencir.retrieval.retriever", "Retriever"),
    "BackboneSpec": ("opencir.backbones.clip", "BackboneSpec"),
    "CIRMethod": ("opencir.methods.base", "CIRMethod"),
    "EvalResult": ("opencir.evaluation.evaluator", "EvalResult"),
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what type checkers and IDEs see (py.typed ships with the package)
    from .api import create_model, evaluate, list_backbones, load_model
    from .backbones.clip import BackboneSpec
    from .data.registry import list_datasets, load_dataset
    from .evaluation.evaluator import EvalResult
    from .methods.base import CIRMethod
    from .methods.hub import push_to_hub, save_pretrained
    from .methods.io import list_methods
    from .recipes import list_recipes
    from .retrieval.retriever import Retriever


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'opencir' has no attribute {name!r}") from None
    value = getattr(_import_module(module), attribute)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
