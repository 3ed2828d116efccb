"""Seeding and deterministic-algorithm switches: one place, called before anything random.

On CPU, the same seed and the same thread count give bit-identical weights and metrics
(``opencir train``, ``pretrain-clip`` and ``demo``; tested). On CUDA,
``torch.use_deterministic_algorithms`` and cuDNN's deterministic mode remove the
non-deterministic kernels PyTorch knows of (``CUBLAS_WORKSPACE_CONFIG`` is set for
cuBLAS); results then repeat on the same GPU model, driver and library versions, but not
across GPU models, and fp16 autocast may still differ from CPU results.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) and, if asked, switch torch to its
    deterministic algorithms (``warn_only``: an op without one warns instead of failing)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def loader_generator(seed: int) -> torch.Generator:
    """The generator a DataLoader derives its worker seeds from (independent of the global RNG)."""
    return torch.Generator().manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
