"""Device names -> ``torch.device``, with one clear error for a device this machine lacks."""
from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without CUDA fails in one line (ValueError)."""
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} asked for, but this machine has no CUDA device that torch "
                             f"{torch.__version__} can use; use device='cpu' or 'auto' (cuda when there is one)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(name)!r} asked for, but this machine has {count} CUDA device(s); "
                             f"use cuda:0..cuda:{count - 1}")
    return device
