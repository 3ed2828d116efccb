"""Optimizers and learning-rate schedules, registered by name."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..registry import Registry
from .config import TrainConfig

OPTIMIZERS: Registry[Callable[[list[dict[str, Any]], TrainConfig], torch.optim.Optimizer]] = Registry("optimizer")
SCHEDULES: Registry[Callable[[TrainConfig, int], Callable[[int], float]]] = Registry("schedule")
"""A schedule factory gets (config, steps_per_epoch) and returns step -> lr multiplier."""


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    for group in groups:
        group["weight_decay"] = 0.0  # CLIP4Cir's Combiner: plain Adam, no weight decay
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Plain SGD (no momentum): updates proportional to the gradient, e.g. to check gradients."""
    return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


@SCHEDULES.register("none")
def _constant(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    return lambda step: 1.0


@SCHEDULES.register("cosine")
def _cosine(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps`` then cosine decay to 0 (Pic2Word recipe)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@SCHEDULES.register("step")
def _step(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiply by ``step_gamma`` at the start of each 0-indexed epoch in ``step_epochs``
    (TG-CIR/OFFSET: epochs 4 and 9)."""
    boundaries = sorted(cfg.step_epochs)

    def factor(step: int) -> float:
        epoch = step // max(1, steps_per_epoch)
        return cfg.step_gamma ** sum(1 for b in boundaries if epoch >= b)

    return factor
