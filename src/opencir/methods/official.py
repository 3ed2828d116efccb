"""Reading checkpoints written by the official code of a method (CLIP4Cir, TG-CIR, OFFSET).

One safe reader for every method's ``load_official_checkpoint``:

* ``read_official_checkpoint(path, method)``: the object stored in the file. A file that
  ``torch.load(weights_only=True)`` accepts is read that way; a whole pickled model
  (the official ``torch.save(model, ...)``) is read by a restricted unpickler that only
  resolves the torch tensor-rebuild functions and a few builtins, and replaces every other
  class by an inert stand-in: neither the official code nor any other class is imported
  or run.
* ``read_official_state_dict(path, method)``: the state dict inside such a file (a plain
  state dict, one under ``state_dict`` / ``model`` / ``model_state_dict``, or the
  parameters and persistent buffers of a pickled model), DataParallel prefix removed.
* ``strip_module_prefix``: drop a DataParallel ``module.`` prefix.
* ``describe_foreign_checkpoint``: a hint naming the method a wrong checkpoint belongs to.
* ``match_official_activation``: give the backbone the activation of the official CLIP
  (OpenAI weights need QuickGELU), or refuse when the user forced the other one.

``method`` is the registered method name (``tg-cir``, ``offset``, ``clip4cir``), used in
error messages.
"""
from __future__ import annotations

import builtins
import codecs
import collections
import logging
import pickle
import struct
import types
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
"""Keys under which a checkpoint file may nest its state dict (first match wins)."""


def match_official_activation(method: Any, source: str | Path) -> bool:
    """Make ``method.backbone`` use the activation its official CLIP was trained with
    (``type(method).official_quick_gelu``: OpenAI CLIP needs QuickGELU, OpenCLIP-LAION
    exact GELU). The activation has no weights, so a mismatch is corrected in place with a
    warning; either way it is recorded in the backbone spec (the saved model rebuilds with it);
    a backbone whose spec forces the other activation is refused. Returns whether it
    switched."""
    want = type(method).official_quick_gelu
    backbone = method.backbone
    if want is None:
        return False
    if backbone.uses_quick_gelu == want:
        if backbone.spec.quick_gelu is None:
            backbone.set_activation(want)  # pin it: the saved model rebuilds with it whatever the default
        return False
    names = {True: "QuickGELU", False: "exact GELU"}
    if backbone.spec.quick_gelu is not None:
        raise ValueError(
            f"{source}: official {method.name} checkpoints were trained with {names[want]} "
            f"({'OpenAI CLIP' if want else 'OpenCLIP'}), but this backbone forces quick_gelu="
            f"{str(backbone.spec.quick_gelu).lower()}; its features would drift. Build the backbone with "
            f"quick_gelu={str(want).lower()} (or leave it unset)"
        )
    backbone.set_activation(want)
    logging.getLogger(__name__).warning(
        "%s: official %s weights need %s (the backbone used %s); switched the backbone's activation "
        "(recorded as quick_gelu=%s)", source, method.name, names[want], names[not want], str(want).lower()
    )
    return True


def strip_module_prefix(state: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Drop a DataParallel ``module.`` prefix if every key has it (a copy otherwise)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def read_official_checkpoint(path: str | Path, method: str) -> Any:
    """The object stored in an official checkpoint file of ``method``, read safely.

    Pickled classes other than the tensor-rebuilding ones come back as inert stand-ins
    (``nn.Module`` trees keep their ``_parameters`` / ``_buffers`` / ``_modules``).
    Raises FileNotFoundError for a missing file and ValueError for a directory or an
    unreadable file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory, not an official {method} checkpoint file; an OpenCIR model directory "
            f"loads with opencir.methods.io.load_model(path, {method!r})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"official {method} checkpoint not found: {path}")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # a whole pickled model: read it with inert classes
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_INERT_PICKLE)
    except (pickle.UnpicklingError, struct.error, RuntimeError, EOFError, OSError, AttributeError, TypeError) as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err


def read_official_state_dict(path: str | Path, method: str) -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint file of ``method`` (see module doc),
    without a DataParallel ``module.`` prefix."""
    obj = read_official_checkpoint(path, method)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], (Mapping, _Inert)):
                obj = obj[key]
                break
    if isinstance(obj, _Inert):
        state = _module_state(obj)
        if not state:
            raise ValueError(f"{path} holds a pickled {type(obj).__qualname__} object without module parameters")
        return strip_module_prefix(state)
    if isinstance(obj, Mapping):
        return strip_module_prefix(obj)
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a {method} state dict or a pickled model")


# ------------------------------------------------------------ foreign checkpoints
_SIGNATURES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (method, how to recognise it, exact keys, key prefixes)
    ("clip4cir", "a CLIP4Cir checkpoint (keys 'CLIP'/'Combiner')", ("CLIP", "Combiner"), ()),
    ("tg-cir", "a TG-CIR checkpoint (backbone.masks / tokenlearn)", ("backbone.masks.weight",), ("backbone.tokenlearn.",)),
    ("offset", "an OFFSET checkpoint (backbone.cross_attention / affine)", (), ("backbone.cross_attention.", "affine.")),
)


def describe_foreign_checkpoint(state: Mapping[str, Any], expected: str) -> str:
    """A hint about what a checkpoint that is not one of method ``expected`` is."""
    keys = list(state)
    for method, looks_like, exact, prefixes in _SIGNATURES:
        if method != expected and (set(exact) & set(keys) or any(k.startswith(prefixes) for k in keys)):
            return f"it looks like {looks_like}; load it with method {method}"
    if any(k.startswith("backbone.clip.") for k in keys):
        return f"it has an official-style CLIP backbone but not {expected}'s modules"
    if any(k.startswith(("visual.", "transformer.")) for k in keys):
        return "it looks like a plain CLIP state dict (use it as the backbone's pretrained weights)"
    return f"found keys {sorted(keys)[:8]}"


# ------------------------------------------------------------- inert unpickling
class _Inert:
    """Stand-in for any class in a pickled model: accepts construction, keeps its state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _inert_class(module: str, name: str) -> type:
    return type(name, (_Inert,), {"__module__": module, "__qualname__": name})


def _inert_reconstructor(cls: type, base: type, state: Any) -> Any:
    return cls() if isinstance(cls, type) and issubclass(cls, _Inert) else _Inert()


def _safe_global(module: str, name: str) -> Any | None:
    """The real object for the few tensor-rebuilding globals a checkpoint needs, else None."""
    if module == "torch._utils" and name.startswith("_rebuild_"):
        return getattr(torch._utils, name, None)
    if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
        return torch._tensor._rebuild_from_type_v2
    if module == "torch" and (name in ("Size", "Tensor", "device") or isinstance(getattr(torch, name, None), torch.dtype)):
        return getattr(torch, name)
    if (module, name) == ("torch.nn.parameter", "Parameter"):
        return nn.Parameter
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if (module, name) == ("copyreg", "_reconstructor"):
        return _inert_reconstructor
    if module == "builtins" and name in ("set", "frozenset", "slice", "complex", "bytearray", "dict", "list", "tuple"):
        return getattr(builtins, name)
    if (module, name) == ("_codecs", "encode"):
        return codecs.encode
    return None


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 files (torch.save's default) name Python 2 modules: __builtin__, copy_reg
        module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
        found = _safe_global(module, name)
        return found if found is not None else _inert_class(module, name)


_INERT_PICKLE = types.ModuleType("opencir_inert_pickle")
"""A ``pickle``-like module for ``torch.load(pickle_module=...)`` using ``_InertUnpickler``."""
_INERT_PICKLE.Unpickler = _InertUnpickler  # type: ignore[attr-defined]
_INERT_PICKLE.load = pickle.load  # type: ignore[attr-defined]
_INERT_PICKLE.__dict__["UnpicklingError"] = pickle.UnpicklingError


def _module_state(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of an inert nn.Module tree, by dotted name."""
    state: dict[str, torch.Tensor] = {}
    skip = set(getattr(obj, "_non_persistent_buffers_set", None) or ())
    tensors = {**(getattr(obj, "_parameters", None) or {}), **(getattr(obj, "_buffers", None) or {})}
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and name not in skip:
            state[prefix + name] = value.detach()
    for name, child in (getattr(obj, "_modules", None) or {}).items():
        if child is not None:
            state.update(_module_state(child, f"{prefix}{name}."))
    return state
