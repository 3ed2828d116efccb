"""``opencir compare RUN_A RUN_B``: is B really better than A on the same queries?

Each of RUN_A / RUN_B is an evaluation folder (``opencir eval --out``, or the demo's
``evals/...``), a model directory or training run (evaluated here; needs ``--dataset`` and
``--root``), or a rankings JSON file (needs ``--dataset``, ``--root`` and ``--split``).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import COMMANDS, Command


@dataclass
class _Result:
    label: str
    rankings: dict
    subsets: dict | None
    description: dict | None
    dataset_args: dict | None


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="evaluation folder, model/run directory or rankings file")
    parser.add_argument("run_b", metavar="RUN_B", help="the same kinds as RUN_A; differences are B - A")
    parser.add_argument("--dataset", help="dataset name (needed for model directories and rankings files)")
    parser.add_argument("--root", help="dataset folder")
    parser.add_argument("--split", help="split (default: the evaluation folder's, else test)")
    parser.add_argument("--option", action="append", default=[], help="dataset option key=value (repeatable)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples and permutations")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument("--out", help="also write the comparison to this JSON file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cache-dir", default=".cache/features")


def _model_dir(path: Path) -> Path | None:
    for candidate in (path, path / "best"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    return None


def _dataset_args(args: argparse.Namespace, fallback: dict | None) -> dict:
    from .eval import parse_options

    if args.dataset:
        if not args.root:
            raise ValueError("--dataset needs --root (the dataset folder)")
        return {"name": args.dataset, "root": args.root, "split": args.split or "test",
                "options": parse_options(args.option)}
    if fallback:
        return {**fallback, "split": args.split or fallback["split"]}
    raise ValueError("give --dataset NAME --root DIR [--split S]: model directories and rankings files do not say "
                     "which queries they rank")


def _load(path_text: str, args: argparse.Namespace, known: dict | None) -> _Result:
    from ..evaluation.outputs import is_eval_dir, read_eval_dir
    from ..evaluation.protocols import read_rankings

    path = Path(path_text)
    if not path.exists():
        raise FileNotFoundError(f"{path_text}: no such evaluation folder, model directory or rankings file")
    if path.is_dir() and is_eval_dir(path):
        ev = read_eval_dir(path)
        return _Result(path_text, ev.rankings, ev.subset_rankings, ev.description.get("protocol"),
                       ev.description.get("dataset"))
    model = _model_dir(path) if path.is_dir() else None
    if model is not None:
        from ..data import load_dataset
        from ..evaluation.evaluator import evaluate
        from ..methods import load_model
        from ..training.trainer import resolve_device

        ds = _dataset_args(args, known)
        device = resolve_device(args.device)
        dataset = load_dataset(ds["name"], ds["root"], ds["split"], **ds["options"])
        result = evaluate(load_model(model, device=device), dataset, args.batch_size, device, args.cache_dir,
                          keep_rankings=True)
        return _Result(path_text, result.rankings, result.subset_rankings or None, None, None)
    if path.is_file():
        return _Result(path_text, read_rankings(path), None, None, None)
    raise ValueError(f"{path_text} is neither an evaluation folder (metrics.json + rankings.json), a model "
                     "directory (config.json + model.safetensors, or a run with best/) nor a rankings file")


def _run(args: argparse.Namespace) -> int:
    from ..data.check import load_annotations_only
    from ..evaluation.breakdown import query_groups
    from ..evaluation.compare import check_same_protocol, compare_rankings, describe_evaluation, format_comparison

    if args.resamples < 100:
        raise ValueError(f"--resamples must be at least 100, got {args.resamples}")
    a = _load(args.run_a, args, None)
    b = _load(args.run_b, args, a.dataset_args)
    if a.description and b.description:
        check_same_protocol(a.description, b.description, (args.run_a, args.run_b))
    ds = _dataset_args(args, a.dataset_args or b.dataset_args)
    dataset = load_annotations_only(ds["name"], ds["root"], ds["split"], **ds["options"])
    here = describe_evaluation(dataset)
    for result in (a, b):
        if result.description:
            check_same_protocol(result.description, here, (result.label, f"the {ds['name']}/{ds['split']} loaded here"))
    groups = query_groups(dataset)
    rows = compare_rankings(dataset, a.rankings, b.rankings, a.subsets, b.subsets, group_of=lambda q: groups.get(q, ()),
                            n_resamples=args.resamples, confidence=args.confidence, seed=args.seed)
    print(f"A = {args.run_a}\nB = {args.run_b}\n{ds['name']}/{ds['split']}: paired bootstrap over queries "
          f"({args.resamples} resamples, {100 * args.confidence:g}% interval of B - A) and paired permutation p-value")
    print(format_comparison(rows, args.confidence))
    if args.out:
        payload: dict[str, Any] = {"a": args.run_a, "b": args.run_b, "dataset": ds, "protocol": here,
                                   "confidence": args.confidence, "resamples": args.resamples,
                                   "rows": [asdict(r) for r in rows]}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")
    return 0


COMMANDS.register("compare")(Command("compare two results on the same queries: paired bootstrap CI and permutation p",
                                     _add, _run))
