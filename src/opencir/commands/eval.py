"""``opencir eval``: official metrics of a saved model (or a baseline) on a dataset split."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..encoding.precision import CHOICES as PRECISION_CHOICES
from . import COMMANDS, Command


def parse_options(items: list[str]) -> dict:
    """``key=value`` strings (YAML values) -> dict, for dataset options."""
    import yaml

    options = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"option {item!r} is not of the form key=value")
        options[key] = yaml.safe_load(raw)
    return options


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="a saved model directory (runs/x/best)")
    parser.add_argument("--method", help="a training-free method instead of --model (image-only, text-only, sum)")
    parser.add_argument("--arch", default="ViT-B-16", help="backbone architecture with --method")
    parser.add_argument("--pretrained", default="openai", help="backbone pretrained tag or checkpoint with --method")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--option", action="append", default=[], help="dataset option key=value (repeatable)")
    parser.add_argument("--out", help="directory for metrics.json, rankings.json and pictures")
    parser.add_argument("--plots", action="store_true", help="also render a metrics bar plot and a retrieval grid")
    parser.add_argument("--submission", help="write evaluation-server files (CIRR test1, CIRCO test) to this folder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                        help="encoder compute precision; auto: bf16 on CPUs with native bf16, else fp32")
    parser.add_argument("--cache-dir", default=".cache/features")
    parser.add_argument("--no-analysis", action="store_true", help="skip the shortcut analysis (image-only and "
                        "text-only on the same backbone) and the per-type breakdowns")


def _run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..evaluation.evaluator import evaluate
    from ..evaluation.outputs import write_eval_dir
    from ..evaluation.protocols import has_ground_truth
    from ..evaluation.shortcuts import format_shortcuts
    from ..evaluation.plots import bar_plot, retrieval_grid
    from ..methods import load_model
    from ..methods.io import build_method
    from ..backbones import BackboneSpec
    from ..training.trainer import resolve_device

    if bool(args.model) == bool(args.method):
        raise ValueError("give exactly one of --model DIR or --method NAME")
    device = resolve_device(args.device)
    if args.model:
        method = load_model(args.model, device=device)
    else:
        method = build_method(args.method, BackboneSpec(args.arch, args.pretrained)).to(device).eval()
    dataset = load_dataset(args.dataset, args.root, args.split, **parse_options(args.option))
    keep = bool(args.out or args.submission)
    analysis = not args.no_analysis and has_ground_truth(dataset)
    result = evaluate(method, dataset, args.batch_size, device, args.cache_dir, keep_rankings=keep,
                      precision=args.precision, analysis=analysis)
    print(json.dumps(result.metrics, indent=2))
    if result.analysis.get("shortcuts"):
        print(format_shortcuts(result.analysis["shortcuts"]))
    if args.submission:
        from ..data.submission import write_submission

        for path in write_submission(dataset, result.rankings, args.submission, result.subset_rankings or None):
            print(f"wrote {path}")
    if args.out:
        out = write_eval_dir(args.out, dataset, result.metrics, result.rankings, result.subset_rankings,
                             result.analysis, parse_options(args.option),
                             {"model": args.model, "method": method.name, "arch": method.backbone.spec.arch})
        if args.plots:
            from ..evaluation.protocols import numeric_metrics

            numbers = numeric_metrics(result.metrics)  # without the gallery_convention label
            keys = [k for k in numbers if "/" not in k or k.startswith("avg/")][:8]  # summary, not per part
            title = " ".join([args.dataset, args.split, *(str(v) for v in result.metrics.values() if isinstance(v, str))])
            bar_plot({method.name: numbers}, keys, out / "metrics.png", title=title)
            scored = [t.query_id for t in dataset.triplets if t.target_ids][:6]
            if scored:
                retrieval_grid(dataset, result.rankings, scored, out / "retrieval_grid.png")
        print(f"wrote {out}")
    return 0


COMMANDS.register("eval")(Command("evaluate a model or a baseline with the benchmark's official protocol", _add, _run))
