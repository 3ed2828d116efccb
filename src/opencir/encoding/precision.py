"""Numeric precision of encoding and training: ``fp32``, ``bf16``, ``fp16`` or ``auto``.

``auto`` picks what the hardware runs fast and safely: bf16 autocast on CPUs with native
bf16 instructions (AVX512-BF16 / AMX, as oneDNN reports them), fp32 on other CPUs, and fp32
on CUDA (published numbers are fp32; ask for ``bf16``/``fp16`` explicitly there). Outputs
of every encoder are returned as float32 whatever the compute precision.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, ContextManager

if TYPE_CHECKING:
    import torch

DTYPE_NAMES: dict[str, str | None] = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}
CHOICES = ("auto", *DTYPE_NAMES)
"""Accepted names (torch is imported lazily: the CLI lists these without loading it)."""


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 kernels natively on this CPU (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device | str) -> str:
    """The concrete precision (``fp32``/``bf16``/``fp16``) for ``name`` on ``device``."""
    import torch

    device_type = torch.device(device).type
    if name not in CHOICES:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(CHOICES)}")
    if name == "auto":
        return "bf16" if device_type == "cpu" and cpu_has_native_bf16() else "fp32"
    if name == "fp16" and device_type == "cpu":
        raise ValueError("precision fp16 is for CUDA devices; on a CPU use bf16 (or fp32)")
    return name


def autocast(precision: str, device: torch.device | str) -> ContextManager[object]:
    """An autocast region for a resolved ``precision`` (a no-op for fp32)."""
    import torch

    dtype_name = DTYPE_NAMES[precision]
    if dtype_name is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype_name))


def resolve_training_precision(name: str, amp: bool, device: torch.device | str) -> str:
    """Training precision: ``auto`` is fp16 autocast (with a grad scaler) on CUDA when
    ``amp`` is on, fp32 otherwise; ``bf16`` runs bf16 autocast on CPU or CUDA."""
    import torch

    if name == "auto":
        return "fp16" if amp and torch.device(device).type == "cuda" else "fp32"
    return resolve_precision(name, device)
