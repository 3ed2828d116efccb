"""``opencir demo``: the whole offline pipeline on cir-shapes, end to end.

generate cir-shapes -> pretrain the small CLIP (cached) -> baselines -> CLIP4Cir stage 1
(task-oriented fine-tuning) -> stage 2 (Combiner on cached features) -> test-split table,
``results.json``, a bar plot and a retrieval grid.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .backbones import BackboneSpec
from .data import load_dataset
from .evaluation.evaluator import evaluate
from .evaluation.plots import bar_plot, retrieval_grid
from .methods.io import build_method, load_model
from .training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig, load_run_config
from .training.run import pretrain_small_clip, run_from_config
from .training.trainer import resolve_device

log = logging.getLogger(__name__)
TABLE_METRICS = ("R@1", "R@5", "R@10", "R@50")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and schedules of the demo (chosen to finish in minutes on 2 CPU cores)."""

    seed: int = 0
    train_triplets: int = 10000
    val_triplets: int = 500
    test_triplets: int = 2000
    clip_epochs: int = 2
    stage1_epochs: int = 2
    stage1_lr: float = 2e-5
    stage2_epochs: int = 30
    stage2_lr: float = 2e-4
    batch_size: int = 128
    extra_methods: tuple[str, ...] = ()
    """Methods trained after CLIP4Cir from their shipped ``<name>-cirshapes`` recipes."""


def default_cache_root() -> Path:
    """Where the pretrained small CLIP is kept across runs (``OPENCIR_CACHE`` overrides)."""
    return Path(os.environ.get("OPENCIR_CACHE", Path.home() / ".cache" / "opencir"))


def _timed(label: str, timings: dict[str, float], fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    value = fn()
    timings[label] = round(time.perf_counter() - start, 1)
    print(f"[demo] {label}: {timings[label]} s", flush=True)
    return value


def format_table(table: dict[str, dict[str, float]], metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """A fixed-width text table: one row per model, one column per metric."""
    width = max(len(name) for name in table) + 2
    lines = ["model".ljust(width) + "".join(m.rjust(9) for m in metrics)]
    for name, row in table.items():
        lines.append(name.ljust(width) + "".join(f"{row[m]:9.2f}" for m in metrics))
    return "\n".join(lines)


EXTRA_METHODS = ("tg-cir", "offset", "pic2word", "context-i2w", "nsfse")
METHOD_LABELS = {"nsfse": "nsfse (reconstruction, no official code)"}


def _train_recipe_and_evaluate(name: str, data: Path, checkpoint: Path, workdir: Path, cache: str, device: str,
                               test, timings: dict[str, float]) -> dict[str, float]:
    """Train method ``name`` with its shipped ``<name>-cirshapes`` recipe on the demo's data
    and small CLIP; return its test metrics."""
    config = load_run_config(f"{name}-cirshapes", [
        f"backbone.pretrained={checkpoint}", f"dataset.root={data}", f"output_dir={workdir / 'runs' / name}",
        f"cache_dir={cache}", f"device={device}"])
    summary = _timed(f"train {name}", timings, lambda: run_from_config(config))
    model = load_model(summary["best_model"], device=resolve_device(device))
    return _timed(f"evaluate {name}", timings, lambda: evaluate(model, test, 256, resolve_device(device), cache).metrics)


def run_demo(workdir: str | Path = "opencir-demo", settings: DemoSettings = DemoSettings(), device: str = "auto") -> dict[str, Any]:
    """Run the demo; returns ``{"table", "timings", "files"}`` and writes them under ``workdir``."""
    from .data.synthetic import generate_if_missing

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data = workdir / "cir-shapes"
    _timed("generate cir-shapes", timings, lambda: generate_if_missing(
        data, seed=settings.seed, train_triplets=settings.train_triplets,
        val_triplets=settings.val_triplets, test_triplets=settings.test_triplets))

    meta = (data / "meta.json").read_bytes()
    key = hashlib.sha256(meta + json.dumps([settings.clip_epochs, settings.batch_size, settings.seed]).encode()).hexdigest()[:12]
    checkpoint = default_cache_root() / f"small-clip-cirshapes-{key}.pt"
    if checkpoint.is_file():
        print(f"[demo] reusing pretrained small CLIP {checkpoint}")
    else:
        _timed("pretrain small CLIP", timings, lambda: pretrain_small_clip(
            data, checkpoint, epochs=settings.clip_epochs, batch_size=settings.batch_size, seed=settings.seed,
            run_dir=workdir / "runs" / "small-clip", device=device))
    spec = BackboneSpec("small-vit", str(checkpoint))
    dev = resolve_device(device)
    test = load_dataset("cir-shapes", data, "test")
    cache = str(workdir / "cache")
    table: dict[str, dict[str, float]] = {}
    for name in ("image-only", "text-only", "sum"):
        method = build_method(name, spec).to(dev)
        table[name] = _timed(f"evaluate {name}", timings, lambda: evaluate(method, test, 256, dev, cache).metrics)

    dataset_cfg = DatasetConfig(name="cir-shapes", root=str(data))
    backbone_cfg = BackboneConfig(arch="small-vit", pretrained=str(checkpoint))
    stage1 = RunConfig(
        method="clip4cir", method_config={"stage": "finetune"}, backbone=backbone_cfg, dataset=dataset_cfg,
        train=TrainConfig(epochs=settings.stage1_epochs, batch_size=settings.batch_size, lr=settings.stage1_lr,
                          eps=1e-7, seed=settings.seed, select_metrics=("R@1", "R@5")),
        output_dir=str(workdir / "runs" / "clip4cir-stage1"), device=device, cache_dir=cache)
    s1 = _timed("train CLIP4Cir stage 1", timings, lambda: run_from_config(stage1))
    stage2 = RunConfig(
        method="clip4cir", method_config={"stage": "combiner"}, backbone=backbone_cfg, dataset=dataset_cfg,
        init_from=s1["best_model"],
        train=TrainConfig(epochs=settings.stage2_epochs, batch_size=settings.batch_size, lr=settings.stage2_lr,
                          optimizer="adam", eps=1e-8, seed=settings.seed, select_metrics=("R@1", "R@5")),
        output_dir=str(workdir / "runs" / "clip4cir-stage2"), device=device, cache_dir=cache)
    s2 = _timed("train CLIP4Cir stage 2 (Combiner)", timings, lambda: run_from_config(stage2))

    stage1_model = load_model(s1["best_model"], device=dev)
    table["clip4cir stage 1 (sum, fine-tuned)"] = _timed("evaluate stage 1", timings, lambda: evaluate(stage1_model, test, 256, dev, cache).metrics)
    combiner = load_model(s2["best_model"], device=dev)
    final = _timed("evaluate CLIP4Cir", timings, lambda: evaluate(combiner, test, 256, dev, cache, keep_rankings=True))
    table["clip4cir (Combiner)"] = final.metrics
    for name in settings.extra_methods:
        table[METHOD_LABELS.get(name, name)] = _train_recipe_and_evaluate(name, data, checkpoint, workdir, cache, device, test, timings)

    files = {
        "results": workdir / "results.json",
        "bar_plot": workdir / "results.png",
        "retrieval_grid": workdir / "retrieval_grid.png",
    }
    files["results"].write_text(json.dumps({"dataset": "cir-shapes", "split": "test", "table": table,
                                            "timings_s": timings}, indent=2))
    bar_plot(table, TABLE_METRICS, files["bar_plot"], title="cir-shapes test")
    queries = [t.query_id for t in test.triplets[:6]]
    retrieval_grid(test, final.rankings, queries, files["retrieval_grid"])
    print(format_table(table))
    for label, path in files.items():
        print(f"[demo] {label}: {path}")
    return {"table": table, "timings": timings, "files": {k: str(v) for k, v in files.items()}}
