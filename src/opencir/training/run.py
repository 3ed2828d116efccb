"""Entry points behind ``opencir train`` and ``opencir pretrain-clip`` (importable, testable)."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from ..backbones import BackboneSpec, ClipBackbone
from ..data import load_dataset
from ..methods.io import build_method, load_backbone_weights, load_weights_into
from .config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig, load_run_config
from .pretrain import ClipPretrain, ClipPretrainConfig, export_backbone_checkpoint
from .distributed import init_distributed
from .seeding import seed_everything
from .trainer import Trainer

log = logging.getLogger(__name__)


def run_from_config(config: RunConfig, resume: bool = True) -> dict[str, Any]:
    """Build method and datasets from ``config`` and train; returns the summary.

    Under ``torchrun`` every rank runs this: it joins the process group first (clear
    errors for a rank without a device or NCCL on CPU)."""
    context = init_distributed(config.device, config.train.backend)
    seed_everything(config.train.seed)  # before the random initialisation (issue 12 item 11)
    spec = BackboneSpec(**dataclasses.asdict(config.backbone))
    method = build_method(config.method, spec, config.method_config)
    if config.init_from:
        load_backbone_weights(method, config.init_from)
    ds = config.dataset
    train_set = load_dataset(ds.name, ds.root, ds.train_split, **ds.options)
    val_set = load_dataset(ds.name, ds.root, ds.val_split, **ds.options) if ds.val_split else None
    summary = Trainer(method, config, train_set, val_set, dist=context).fit(resume=resume)
    summary["rank"], summary["world_size"] = context.rank, context.world_size
    summary["output_dir"] = str(config.output_dir)
    summary["best_model"] = str(Path(config.output_dir) / "best")
    return summary


def run_training(config_path: str | Path | None, overrides: Sequence[str] = (), resume: bool = True) -> dict[str, Any]:
    """``opencir train``: YAML config + dotted overrides -> trained model under output_dir."""
    return run_from_config(load_run_config(config_path, overrides), resume=resume)


SEEDS_FILE = "seeds.json"


def run_with_seeds(config_path: str | Path | None, overrides: Sequence[str], seeds: int,
                   resume: bool = True) -> dict[str, Any]:
    """``opencir train --seeds N``: the run repeated with seeds ``train.seed + i`` into
    ``output_dir/seed-S`` (``{seed}`` in an override is that seed); returns and writes
    (``output_dir/seeds.json``, rank 0) the per-seed best validation metrics, their mean
    and sample standard deviation."""
    from ..evaluation.spread import mean_and_std

    base = load_run_config(config_path, overrides)  # checks the config once, before any training
    root, first = Path(base.output_dir), base.train.seed
    per_seed: dict[str, dict[str, float]] = {}
    runs: dict[str, str] = {}
    summary: dict[str, Any] = {}
    for seed in range(first, first + seeds):
        seeded = [o.replace("{seed}", str(seed)) for o in overrides]
        summary = run_training(config_path, [*seeded, f"train.seed={seed}", f"output_dir={root / f'seed-{seed}'}"],
                               resume=resume)
        per_seed[str(seed)] = dict(summary["best_metrics"])
        runs[str(seed)] = summary["output_dir"]
    mean, std = mean_and_std([{"best": metrics} for metrics in per_seed.values()])
    result = {"seeds": list(range(first, first + seeds)), "runs": runs, "per_seed": per_seed,
              "mean": mean["best"], "std": std["best"], "rank": summary.get("rank", 0)}
    if result["rank"] == 0:
        root.mkdir(parents=True, exist_ok=True)
        (root / SEEDS_FILE).write_text(json.dumps({k: v for k, v in result.items() if k != "rank"}, indent=2))
        for metric in result["mean"]:
            log.info("best %s over seeds %s: %.2f ± %.2f", metric, result["seeds"], result["mean"][metric],
                     result["std"][metric])
    return result


def pretrain_small_clip(
    data_root: str | Path,
    out: str | Path,
    arch: str = "small-vit",
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    run_dir: str | Path | None = None,
    device: str = "auto",
    warmup_steps: int = 50,
) -> Path:
    """Train a small CLIP on cir-shapes train images + captions; export an open_clip checkpoint.

    Validation: the sum baseline's R@1 on the val triplets selects the best epoch.
    """
    out = Path(out)
    run_dir = Path(run_dir) if run_dir else out.with_suffix("").with_name(out.stem + "-run")
    config = RunConfig(
        method="clip-pretrain",
        backbone=BackboneConfig(arch=arch, pretrained=None),
        dataset=DatasetConfig(name="cir-shapes", root=str(data_root)),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6,
                          schedule="cosine", warmup_steps=warmup_steps, seed=seed, select_metrics=("R@1", "R@5"), amp=True),
        output_dir=str(run_dir),
        device=device,
        cache_dir=None,
    )
    seed_everything(seed)  # before the random initialisation of the backbone
    method = ClipPretrain(ClipBackbone(BackboneSpec(arch)), ClipPretrainConfig())
    train_set = load_dataset("cir-shapes", data_root, "train")
    val_set = load_dataset("cir-shapes", data_root, "val")
    summary = Trainer(method, config, train_set, val_set).fit(resume=True)
    log.info("small CLIP pretraining: best epoch %s, val %s", summary["best_epoch"], summary["best_metrics"])
    load_weights_into(method, run_dir / "best")
    return export_backbone_checkpoint(method, out)
