"""NSFSE ablation on cir-shapes: the negative-sensitive loss vs plain InfoNCE.

NSFSE here is a RECONSTRUCTION (spec 6.3, [INFERRED]); the paper has no public code.
Four runs share the data, the frozen small CLIP pre-trained on cir-shapes, the training
subset, optimiser, schedule and epochs (the settings of src/opencir/recipes/nsfse-cirshapes.yaml):

* ``nsfse+infonce``     the reconstructed composer trained with in-batch InfoNCE only;
* ``nsfse+nsfse``       the same composer with the negative-sensitive loss (+ InfoNCE);
* ``combiner+infonce``  CLIP4Cir's Combiner (stage ``combiner``, no stage-1) with InfoNCE;
* ``combiner+nsfse``    the same Combiner with the negative-sensitive loss.

Each run selects its best epoch on val (R@1 + R@5) and is scored on test. Results go to
``<out>/results.json`` and a markdown table on stdout.

    OMP_NUM_THREADS=1 python benchmarks/ablation_nsfse.py --data /tmp/demo1/cir-shapes \\
        --clip /tmp/opencir-cache/small-clip-cirshapes-<...>.pt --out /tmp/nsfse-ablation
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from opencir.backbones import BackboneSpec
from opencir.data import load_dataset
from opencir.evaluation.evaluator import evaluate
from opencir.methods.io import build_method, load_model
from opencir.training.config import RunConfig, load_run_config
from opencir.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipes" / "nsfse-cirshapes.yaml"
COMBINER = {"stage": "combiner", "logit_scale": 100.0}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "nsfse+infonce": ("nsfse", {"loss": "infonce"}),
    "nsfse+nsfse": ("nsfse", {"loss": "nsfse"}),
    "combiner+infonce": ("clip4cir", {**COMBINER, "loss": "infonce"}),
    "combiner+nsfse": ("clip4cir", {**COMBINER, "loss": "nsfse"}),
}
REPORTED = ("R@1", "R@5", "R@10")


def run_name(variant: str, loss_options: dict[str, Any]) -> str:
    """``variant`` plus the loss-option overrides, e.g. ``nsfse+nsfse[beta=10]``."""
    if not loss_options or not variant.endswith("+nsfse"):
        return variant
    return variant + "[" + ",".join(f"{k}={v}" for k, v in sorted(loss_options.items())) + "]"


def run_config(variant: str, base: RunConfig, out: Path, loss_options: dict[str, Any]) -> RunConfig:
    """The recipe with the variant's method and loss; the recipe's loss options updated by
    ``loss_options`` (negative-sensitive runs only)."""
    method, changes = VARIANTS[variant]
    recipe = base.method_config
    config = dict(recipe) if method == base.method else {}
    config.update(changes)
    if config["loss"] == "nsfse":
        config["loss_options"] = {**(recipe.get("loss_options") or {}), **loss_options}
    else:
        config.pop("loss_options", None)
    name = run_name(variant, loss_options)
    return dataclasses.replace(base, method=method, method_config=config, output_dir=str(out / name))


def train_subset(dataset, size: int | None, seed: int):
    """A seeded random subset of ``size`` training triplets (all when None)."""
    if size is None or size >= len(dataset.triplets):
        return dataset
    triplets = random.Random(seed).sample(dataset.triplets, size)
    return dataclasses.replace(dataset, triplets=triplets)


def run_variant(name: str, config: RunConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Train one variant, select on val, score the best model on test."""
    torch.manual_seed(config.train.seed)
    spec = BackboneSpec(config.backbone.arch, config.backbone.pretrained)
    method = build_method(config.method, spec, config.method_config)
    start = time.perf_counter()
    summary = Trainer(method, config, data["train"], data["val"]).fit(resume=False)
    train_s = time.perf_counter() - start
    best = load_model(Path(config.output_dir) / "best")
    test = evaluate(best, data["test"], config.train.eval_batch_size, "cpu", config.cache_dir)
    return {
        "run": name,
        "method": config.method,
        "method_config": config.method_config,
        "best_epoch": summary["best_epoch"],
        "val": {k: summary["best_metrics"][k] for k in REPORTED},
        "test": {k: test.metrics[k] for k in REPORTED},
        "train_seconds": round(train_s, 1),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| run | method | loss (options changed from the recipe) | best epoch | val R@1 | val R@5 | test R@1 | test R@5 "
        "| test R@10 | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = "NSFSE composer (reconstruction)" if r["method"] == "nsfse" else "CLIP4Cir Combiner (no stage 1)"
        lines.append(
            f"| {r['run']} | {name} | {r['method_config']['loss']} {r['loss_overrides'] or ''} | {r['best_epoch'] + 1} | "
            f"{r['val']['R@1']:.2f} | {r['val']['R@5']:.2f} | {r['test']['R@1']:.2f} | {r['test']['R@5']:.2f} | "
            f"{r['test']['R@10']:.2f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/tmp/demo1/cir-shapes", help="cir-shapes folder")
    parser.add_argument("--clip", required=True, help="small-vit checkpoint pre-trained on cir-shapes")
    parser.add_argument("--out", default="runs/ablation-nsfse", help="run folders + results.json")
    parser.add_argument("--train-triplets", type=int, default=4000, help="training subset size (0 = all)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--loss-options", type=json.loads, default={},
                        help='JSON overrides of the recipe\'s nsfse loss_options, e.g. \'{"beta": 10}\'')
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    out = Path(args.out)
    overrides = [f"backbone.pretrained={args.clip}", f"dataset.root={args.data}", f"train.seed={args.seed}",
                 f"cache_dir={out / 'cache'}", "device=cpu"]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    base = load_run_config(RECIPE, overrides)
    train = load_dataset("cir-shapes", args.data, "train")
    data = {
        "train": train_subset(train, args.train_triplets or None, args.seed),
        "val": load_dataset("cir-shapes", args.data, "val"),
        "test": load_dataset("cir-shapes", args.data, "test"),
    }
    results_file = out / "results.json"
    done = {r["run"]: r for r in json.loads(results_file.read_text())} if results_file.is_file() else {}
    for variant in args.variants:
        name = run_name(variant, args.loss_options)
        result = run_variant(name, run_config(variant, base, out, args.loss_options), data)
        result.update(train_triplets=len(data["train"].triplets), clip=args.clip, epochs=base.train.epochs,
                      loss_overrides=args.loss_options if name != variant else {})
        print(json.dumps(result), flush=True)
        done[name] = result
        out.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(list(done.values()), indent=2))
    print(markdown(list(done.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
