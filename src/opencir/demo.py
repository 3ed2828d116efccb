"""``opencir demo``: the whole offline pipeline on cir-shapes, end to end.

generate cir-shapes -> pretrain the small CLIP (cached) -> baselines -> CLIP4Cir stage 1
(task-oriented fine-tuning) -> stage 2 (Combiner on cached features) -> test-split table,
``results.json``, a bar plot and a retrieval grid. Stages 1 and 2 run the shipped
``clip4cir-cirshapes-stage{1,2}`` recipes. With several seeds every training stage
(pretraining included) repeats per seed and the table is mean ± standard deviation.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .backbones import BackboneSpec
from .data import load_dataset
from .evaluation.evaluator import evaluate
from .evaluation.outputs import write_eval_dir
from .evaluation.shortcuts import analyze
from .evaluation.spread import mean_and_std
from .evaluation.plots import bar_plot, retrieval_grid
from .methods.io import build_method, load_model
from .training.config import load_run_config
from .training.run import pretrain_small_clip, run_from_config
from .training.trainer import resolve_device

log = logging.getLogger(__name__)
TABLE_METRICS = ("R@1", "R@5", "R@10", "R@50")
COMBINER_ROW = "clip4cir (Combiner)"
STAGE1_ROW = "clip4cir stage 1 (sum, fine-tuned)"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and schedules of the demo (chosen to finish in minutes on 2 CPU cores).

    ``seed`` seeds the training stages; the benchmark itself is generated with
    ``data_seed`` (the same benchmark for every training seed). ``None`` for a stage's
    epochs / batch size keeps the shipped recipe's value.
    """

    seed: int = 0
    data_seed: int = 0
    train_triplets: int = 10000
    val_triplets: int = 500
    test_triplets: int = 2000
    clip_epochs: int = 2
    clip_lr: float = 1e-3
    clip_warmup_steps: int = 50
    clip_batch_size: int = 128
    stage1_epochs: int | None = None
    stage2_epochs: int | None = None
    batch_size: int | None = None
    paraphrases: int = 5
    """Wordings of every test query the Combiner is re-scored with (paraphrase robustness)."""
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


def format_table(table: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = TABLE_METRICS,
                 spread: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """A fixed-width text table: one row per model, one column per metric (``mean ± std``
    when ``spread`` is given)."""
    width = max(len(name) for name in table) + 2
    cell = 15 if spread else 9
    lines = ["model".ljust(width) + "".join(m.rjust(cell) for m in metrics)]
    for name, row in table.items():
        if spread:
            cells = "".join(f"{row[m]:.2f} ± {spread[name][m]:.2f}".rjust(cell) for m in metrics)
        else:
            cells = "".join(f"{row[m]:9.2f}" for m in metrics)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)


EXTRA_METHODS = ("tg-cir", "offset", "pic2word", "context-i2w", "nsfse")
METHOD_LABELS = {"nsfse": "nsfse (reconstruction, no official code)"}


def _recipe(name: str, checkpoint: Path, data: Path, out: Path, cache: str, device: str, seed: int,
            extra: Sequence[str] = ()) -> Any:
    """A shipped cir-shapes recipe pointed at the demo's data, small CLIP and run folder."""
    return load_run_config(name, [f"backbone.pretrained={checkpoint}", f"dataset.root={data}", f"output_dir={out}",
                                  f"cache_dir={cache}", f"device={device}", f"train.seed={seed}", *extra])


def _pretrained_clip(data: Path, settings: DemoSettings, run_dir: Path, device: str, timings: dict[str, float]) -> Path:
    """The small CLIP pretrained on ``data`` with this seed and recipe (cached across runs)."""
    recipe = [settings.clip_epochs, settings.clip_batch_size, settings.clip_lr, settings.clip_warmup_steps, settings.seed]
    key = hashlib.sha256((data / "meta.json").read_bytes() + json.dumps(recipe).encode()).hexdigest()[:12]
    checkpoint = default_cache_root() / f"small-clip-cirshapes-{key}.pt"
    if checkpoint.is_file():
        print(f"[demo] reusing pretrained small CLIP {checkpoint}")
        return checkpoint
    return _timed("pretrain small CLIP", timings, lambda: pretrain_small_clip(
        data, checkpoint, epochs=settings.clip_epochs, batch_size=settings.clip_batch_size, lr=settings.clip_lr,
        seed=settings.seed, run_dir=run_dir, device=device, warmup_steps=settings.clip_warmup_steps))


def slug(label: str) -> str:
    """A folder name for a table row ("clip4cir (Combiner)" -> "clip4cir-combiner")."""
    return "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def _evaluate_row(label: str, method: Any, test: Any, dev: Any, cache: str, evals: Path, timings: dict[str, float],
                  model: dict[str, Any], paraphrases: int = 0) -> Any:
    """Evaluate one table row with its analysis; writes ``evals/<slug>``; returns the result."""
    def run() -> Any:
        result = evaluate(method, test, 256, dev, cache, keep_rankings=True)
        result.analysis = analyze(method, test, result.rankings, None, 256, dev, cache, paraphrase_variants=paraphrases)
        return result

    result = _timed(f"evaluate {label}", timings, run)
    write_eval_dir(evals / slug(label), test, result.metrics, result.rankings, None, result.analysis,
                   model={"label": label, "method": method.name, **model})
    return result


def run_seed(workdir: Path, data: Path, settings: DemoSettings, device: str) -> dict[str, Any]:
    """One seed of the pipeline: returns ``{"table", "timings", "test", "rankings"}``; every
    row's evaluation (metrics, rankings, shortcut analysis) goes to ``evals/seed-<seed>/<row>``."""
    timings: dict[str, float] = {}
    runs = workdir / "runs" / f"seed-{settings.seed}"
    evals = workdir / "evals" / f"seed-{settings.seed}"
    checkpoint = _pretrained_clip(data, settings, runs / "small-clip", device, timings)
    spec = BackboneSpec("small-vit", str(checkpoint))
    dev = resolve_device(device)
    test = load_dataset("cir-shapes", data, "test")
    cache = str(workdir / "cache")
    table: dict[str, dict[str, float]] = {}
    for name in ("image-only", "text-only", "sum"):
        method = build_method(name, spec).to(dev)
        table[name] = _evaluate_row(name, method, test, dev, cache, evals, timings, {"backbone": str(checkpoint)}).metrics

    common = [f"train.batch_size={settings.batch_size}"] if settings.batch_size else []
    s1_extra = [*common, *([f"train.epochs={settings.stage1_epochs}"] if settings.stage1_epochs else [])]
    stage1 = _recipe("clip4cir-cirshapes-stage1", checkpoint, data, runs / "clip4cir-stage1", cache, device,
                     settings.seed, s1_extra)
    s1 = _timed("train CLIP4Cir stage 1", timings, lambda: run_from_config(stage1))
    s2_extra = [*common, *([f"train.epochs={settings.stage2_epochs}"] if settings.stage2_epochs else []),
                f"init_from={s1['best_model']}"]
    stage2 = _recipe("clip4cir-cirshapes-stage2", checkpoint, data, runs / "clip4cir-stage2", cache, device,
                     settings.seed, s2_extra)
    s2 = _timed("train CLIP4Cir stage 2 (Combiner)", timings, lambda: run_from_config(stage2))

    stage1_model = load_model(s1["best_model"], device=dev)
    table[STAGE1_ROW] = _evaluate_row(STAGE1_ROW, stage1_model, test, dev, cache, evals, timings,
                                      {"model": s1["best_model"], "run": s1["output_dir"]}).metrics
    combiner = load_model(s2["best_model"], device=dev)
    final = _evaluate_row(COMBINER_ROW, combiner, test, dev, cache, evals, timings,
                          {"model": s2["best_model"], "run": s2["output_dir"]}, paraphrases=settings.paraphrases)
    table[COMBINER_ROW] = final.metrics
    for name in settings.extra_methods:
        config = _recipe(f"{name}-cirshapes", checkpoint, data, runs / name, cache, device, settings.seed)
        summary = _timed(f"train {name}", timings, lambda: run_from_config(config))
        label = METHOD_LABELS.get(name, name)
        table[label] = _evaluate_row(label, load_model(summary["best_model"], device=dev), test, dev, cache, evals,
                                     timings, {"model": summary["best_model"], "run": summary["output_dir"]}).metrics
    return {"table": table, "timings": timings, "test": test, "rankings": final.rankings}


def run_demo(workdir: str | Path = "opencir-demo", settings: DemoSettings = DemoSettings(), device: str = "auto",
             seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Run the demo for each of ``seeds`` (default: ``settings.seed``); returns
    ``{"table", "std", "per_seed", "timings", "files"}`` and writes them under ``workdir``.
    ``table`` is the mean over seeds, ``std`` the sample standard deviation."""
    from dataclasses import replace

    from .data.synthetic import generate_if_missing

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds) if seeds else [settings.seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed; give distinct seeds")
    timings: dict[str, float] = {}
    data = workdir / "cir-shapes"
    _timed("generate cir-shapes", timings, lambda: generate_if_missing(
        data, seed=settings.data_seed, train_triplets=settings.train_triplets,
        val_triplets=settings.val_triplets, test_triplets=settings.test_triplets))
    per_seed: dict[str, dict[str, dict[str, float]]] = {}
    last: dict[str, Any] = {}
    for seed in seeds:
        if len(seeds) > 1:
            print(f"[demo] seed {seed}", flush=True)
        last = run_seed(workdir, data, replace(settings, seed=seed), device)
        per_seed[str(seed)] = last["table"]
        timings.update({(f"seed {seed}: {k}" if len(seeds) > 1 else k): v for k, v in last["timings"].items()})
    table, std = mean_and_std(list(per_seed.values()))

    files = {
        "results": workdir / "results.json",
        "bar_plot": workdir / "results.png",
        "retrieval_grid": workdir / "retrieval_grid.png",
    }
    files["results"].write_text(json.dumps({
        "dataset": "cir-shapes", "split": "test", "seeds": seeds, "table": table, "std": std,
        "per_seed": per_seed, "timings_s": timings, "main_row": COMBINER_ROW,
        "eval_dirs": {row: str(workdir / "evals" / f"seed-{seeds[0]}" / slug(row)) for row in table},
        "runs_dir": str(workdir / "runs" / f"seed-{seeds[0]}")}, indent=2))
    title = "cir-shapes test" + (f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else "")
    bar_plot(table, TABLE_METRICS, files["bar_plot"], title=title)
    test = last["test"]
    queries = [t.query_id for t in test.triplets[:6]]
    retrieval_grid(test, last["rankings"], queries, files["retrieval_grid"])
    print(format_table(table, spread=std if len(seeds) > 1 else None))
    if len(seeds) > 1:
        print(f"[demo] mean ± sample standard deviation over seeds {seeds}")
    for label, path in files.items():
        print(f"[demo] {label}: {path}")
    return {"table": table, "std": std, "per_seed": per_seed, "timings": timings,
            "files": {k: str(v) for k, v in files.items()}}
