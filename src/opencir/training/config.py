"""Run configuration: dataclasses read from YAML with dotted ``key=value`` overrides.

Unknown keys fail with the list of valid ones; the resolved config is written with every run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml


@dataclass
class BackboneConfig:
    """open_clip architecture + pretrained tag/path (see ``opencir.backbones``)."""

    arch: str = "ViT-B-16"
    pretrained: str | None = "openai"
    cache_dir: str | None = None
    grad_checkpointing: bool = False
    quick_gelu: bool | None = None  # None: QuickGELU exactly when the weights are OpenAI's (BackboneSpec)


@dataclass
class DatasetConfig:
    """A registered dataset, its root folder, splits and loader options."""

    name: str = "cir-shapes"
    root: str = "data/cir-shapes"
    train_split: str = "train"
    val_split: str | None = "val"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping (one trainer for every method)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-6
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7
    schedule: str = "none"
    warmup_steps: int = 0
    step_epochs: tuple[int, ...] = ()
    step_gamma: float = 0.1
    grad_clip: float | None = None
    amp: bool = True
    precision: str = "auto"
    """auto (fp16 autocast on CUDA when amp, else fp32) | fp32 | bf16 (CPU or CUDA) | fp16 (CUDA)."""
    seed: int = 42
    num_workers: int = 0
    drop_last: bool = True
    val_every: int = 1
    eval_batch_size: int = 128
    select_metrics: tuple[str, ...] = ("R@1",)
    early_stop_patience: int | None = None
    save_last: bool = True
    accumulate: int = 1
    """Micro-batches per step: the global ``batch_size`` is split into this many parts per
    rank (same loss and gradients as the whole batch, docs/training.md)."""
    strategy: str = "ddp"
    """Under torchrun: ``ddp`` (replicated weights) or ``fsdp`` (sharded weights)."""
    backend: str = "auto"
    """Under torchrun: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``."""
    log_steps: bool = False
    """Also write every step's (globally averaged) losses to ``steps.jsonl``."""


@dataclass
class RunConfig:
    """Everything one ``opencir train`` run needs."""

    method: str = "clip4cir"
    method_config: dict[str, Any] = field(default_factory=dict)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from: str | None = None
    output_dir: str = "runs/run"
    device: str = "auto"
    cache_dir: str | None = ".cache/features"


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise KeyError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; valid keys under "
                       f"{where or 'the top level'}: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        f = names[key]
        if dataclasses.is_dataclass(f.default_factory) if f.default_factory is not dataclasses.MISSING else False:
            kwargs[key] = _build(f.default_factory, value or {}, f"{where}{key}.")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise KeyError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (a path or a shipped recipe name, see ``opencir.recipes``;
    None for the defaults) and apply ``a.b=value`` overrides (YAML values)."""
    from ..recipes import recipe_path

    tree: dict[str, Any] = {}
    if path is not None:
        path = recipe_path(path)
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: a run config must be a YAML mapping")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3)")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return _build(RunConfig, tree, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples as lists), for YAML/JSON."""
    def convert(value: Any) -> Any:
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(dataclasses.asdict(config))


def save_run_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
