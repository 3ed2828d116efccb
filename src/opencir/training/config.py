"""Run configuration: dataclasses read from YAML with dotted ``key=value`` overrides.

Every value is checked against its field's type and range (``opencir.typed``) before any
work starts: ``train.lr=1e-4`` becomes a float, ``train.epochs=three`` or
``train.batch_size=0`` fail in one line naming the key. Unknown keys fail with the list of
valid ones; the resolved config is written with every run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..encoding.precision import CHOICES as PRECISION_CHOICES
from ..typed import ConfigError, Validated, bounds, build_dataclass
from .distributed import BACKENDS, STRATEGIES

POSITIVE = bounds(min=1)
NON_NEGATIVE = bounds(min=0)


@dataclass
class BackboneConfig(Validated):
    """open_clip architecture + pretrained tag/path (see ``opencir.backbones``)."""

    arch: str = "ViT-B-16"
    pretrained: str | None = "openai"
    cache_dir: str | None = None
    grad_checkpointing: bool = False
    quick_gelu: bool | None = None  # None: QuickGELU exactly when the weights are OpenAI's (BackboneSpec)


@dataclass
class DatasetConfig(Validated):
    """A registered dataset, its root folder, splits and loader options."""

    name: str = "cir-shapes"
    root: str = "data/cir-shapes"
    train_split: str = "train"
    val_split: str | None = "val"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig(Validated):
    """Optimisation and bookkeeping (one trainer for every method)."""

    epochs: int = field(default=10, metadata=POSITIVE)
    batch_size: int = field(default=128, metadata=POSITIVE)
    lr: float = field(default=2e-6, metadata=bounds(min=0, exclusive_min=True))
    weight_decay: float = field(default=0.01, metadata=NON_NEGATIVE)
    optimizer: str = "adamw"
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=bounds(min=0, max=1))
    eps: float = field(default=1e-7, metadata=bounds(min=0, exclusive_min=True))
    schedule: str = "none"
    warmup_steps: int = field(default=0, metadata=NON_NEGATIVE)
    step_epochs: tuple[int, ...] = field(default=(), metadata=POSITIVE)
    step_gamma: float = field(default=0.1, metadata=bounds(min=0, exclusive_min=True))
    grad_clip: float | None = field(default=None, metadata=bounds(min=0, exclusive_min=True))
    amp: bool = True
    precision: str = field(default="auto", metadata=bounds(choices=PRECISION_CHOICES))
    """auto (fp16 autocast on CUDA when amp, else fp32) | fp32 | bf16 (CPU or CUDA) | fp16 (CUDA)."""
    seed: int = 42
    num_workers: int = field(default=0, metadata=NON_NEGATIVE)
    drop_last: bool = True
    val_every: int = field(default=1, metadata=POSITIVE)
    eval_batch_size: int = field(default=128, metadata=POSITIVE)
    select_metrics: tuple[str, ...] = ("R@1",)
    early_stop_patience: int | None = field(default=None, metadata=POSITIVE)
    save_last: bool = True
    accumulate: int = field(default=1, metadata=POSITIVE)
    """Micro-batches per step: the global ``batch_size`` is split into this many parts per
    rank (same loss and gradients as the whole batch, docs/training.md)."""
    strategy: str = field(default="ddp", metadata=bounds(choices=STRATEGIES))
    """Under torchrun: ``ddp`` (replicated weights) or ``fsdp`` (sharded weights)."""
    backend: str = field(default="auto", metadata=bounds(choices=BACKENDS))
    """Under torchrun: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``."""
    log_steps: bool = False
    """Also write every step's (globally averaged) losses to ``steps.jsonl``."""


@dataclass
class RunConfig(Validated):
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


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise KeyError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def _override_value(raw: str) -> Any:
    """An override's value read as YAML (``3``, ``true``, ``[1, 2]``, ``null``); text that is
    not valid YAML stays a string (types are checked against the fields afterwards)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (a path or a shipped recipe name, see ``opencir.recipes``;
    None for the defaults) and apply ``a.b=value`` overrides (YAML values)."""
    from ..recipes import recipe_path

    tree: dict[str, Any] = {}
    if path is not None:
        path = recipe_path(path)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: a run config must be a YAML mapping")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3)")
        _set_dotted(tree, key.strip(), _override_value(raw))
    config = build_dataclass(RunConfig, tree)
    validate_run_config(config)
    return config


def validate_run_config(config: RunConfig) -> None:
    """Check the names a run config refers to (method, its options, dataset, optimizer,
    schedule, device) before anything is built; each failure is one line naming the key."""
    from ..data import list_datasets
    from ..methods.base import METHODS
    from ..methods.io import list_methods
    from ..devices import resolve_device
    from .optim import OPTIMIZERS, SCHEDULES

    for key, value, valid in (("method", config.method, list_methods()), ("dataset.name", config.dataset.name, list_datasets()),
                              ("train.optimizer", config.train.optimizer, OPTIMIZERS.names()),
                              ("train.schedule", config.train.schedule, SCHEDULES.names())):
        if value not in valid:
            raise ConfigError(f"config key {key!r}: unknown name {value!r}; valid: {', '.join(valid)}")
    METHODS.get(config.method).config_class.from_dict(config.method_config, "method_config.")
    try:
        resolve_device(config.device)
    except ValueError as err:
        raise ConfigError(f"config key 'device': {err}") from None


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
