"""``opencir eval``: official metrics of a saved model (or a baseline) on a dataset split."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..encoding.precision import CHOICES as PRECISION_CHOICES
from . import COMMANDS, DEVICE_HELP, Command, positive_int

log = logging.getLogger(__name__)


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
    parser.add_argument("--model", help="a saved model directory (runs/x/best) or a Hub model (hf-hub:ORG/NAME)")
    parser.add_argument("--method", help="a training-free method instead of --model (image-only, text-only, sum)")
    parser.add_argument("--arch", default="ViT-B-16", help="backbone architecture with --method")
    parser.add_argument("--pretrained", default="openai", help="backbone pretrained tag or checkpoint with --method")
    parser.add_argument("--dataset", required=True, help="registered dataset name (cirr, fashioniq, shoes, circo, cir-shapes, ...)")
    parser.add_argument("--root", required=True, help="the dataset folder, laid out as its authors publish it")
    parser.add_argument("--split", default="test", help="split to score (val, test, test1, ...)")
    parser.add_argument("--option", action="append", default=[], help="dataset option key=value (repeatable)")
    parser.add_argument("--out", help="directory for metrics.json (metrics + provenance), rankings.json and pictures")
    parser.add_argument("--plots", action="store_true", help="also render a metrics bar plot and a retrieval grid")
    parser.add_argument("--submission", help="write evaluation-server files (CIRR test1, CIRCO test) to this folder")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images or queries per encoder call")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                        help="encoder compute precision; auto: bf16 on CPUs with native bf16, else fp32")
    parser.add_argument("--cache-dir", default=".cache/features", help="feature cache of frozen image encoders")
    parser.add_argument("--no-analysis", action="store_true", help="skip the shortcut analysis (image-only and "
                        "text-only on the same backbone) and the per-type breakdowns")


def provenance(args: argparse.Namespace, method: Any, dataset: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Where a metrics.json comes from: model (directory + fingerprint), method, dataset,
    split, gallery convention and size, number of queries, opencir version, date."""
    from .. import __version__
    from ..evaluation.protocols import GALLERY_CONVENTION_KEY, protocol_labels
    from ..methods.hub import model_reference
    from ..retrieval.store import model_fingerprint

    parts = dataset.evaluation_parts()
    excluded = {bool(p.protocol.exclude_reference) for p in parts.values() if p.protocol is not None}
    return {
        "model": {
            "directory": model_reference(args.model) if args.model else None,
            "fingerprint": model_fingerprint(method),
            "method": method.name,
            "backbone": method.backbone.spec.to_dict(),
        },
        "dataset": {"name": args.dataset, "root": str(Path(args.root).resolve()), "split": args.split,
                    "options": options},
        "gallery": {
            "convention": protocol_labels(dataset).get(GALLERY_CONVENTION_KEY, "official"),
            "size": sum(len(p.gallery_ids) for p in parts.values()),
            "sizes": {name: len(p.gallery_ids) for name, p in parts.items()} if len(parts) > 1 else None,
            "reference_excluded": excluded == {True},
        },
        "queries": sum(len(p.triplets) for p in parts.values()),
        "precision": args.precision,
        "opencir_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..evaluation.evaluator import evaluate
    from ..evaluation.outputs import write_eval_dir
    from ..evaluation.protocols import has_ground_truth
    from ..evaluation.shortcuts import format_shortcuts
    from ..evaluation.plots import bar_plot, retrieval_grid
    from ..api import load_model  # a directory or an hf-hub: name
    from ..methods.io import build_method
    from ..backbones import BackboneSpec
    from ..training.trainer import resolve_device

    if bool(args.model) == bool(args.method):
        raise ValueError("give exactly one of --model DIR or --method NAME")
    device = resolve_device(args.device)
    options = parse_options(args.option)
    if args.model:
        method = load_model(args.model, device=device)
    else:
        method = build_method(args.method, BackboneSpec(args.arch, args.pretrained)).to(device).eval()
    dataset = load_dataset(args.dataset, args.root, args.split, **options)
    keep = bool(args.out or args.submission)
    analysis = not args.no_analysis and has_ground_truth(dataset)
    result = evaluate(method, dataset, args.batch_size, device, args.cache_dir, keep_rankings=keep,
                      precision=args.precision, analysis=analysis)
    print(json.dumps(result.metrics, indent=2))  # stdout holds only this JSON; messages go to stderr
    if result.analysis.get("shortcuts"):
        print(format_shortcuts(result.analysis["shortcuts"]), file=sys.stderr)
    if args.submission:
        from ..data.submission import write_submission

        for path in write_submission(dataset, result.rankings, args.submission, result.subset_rankings or None):
            log.info("wrote %s", path)
    if args.out:
        out = write_eval_dir(args.out, dataset, result.metrics, result.rankings, result.subset_rankings,
                             result.analysis, options,
                             {"model": args.model, "method": method.name, "arch": method.backbone.spec.arch},
                             provenance(args, method, dataset, options))
        if args.plots:
            from ..evaluation.protocols import numeric_metrics

            numbers = numeric_metrics(result.metrics)  # without the gallery_convention label
            keys = [k for k in numbers if "/" not in k or k.startswith("avg/")][:8]  # summary, not per part
            title = " ".join([args.dataset, args.split, *(str(v) for v in result.metrics.values() if isinstance(v, str))])
            bar_plot({method.name: numbers}, keys, out / "metrics.png", title=title)
            scored = [t.query_id for t in dataset.triplets if t.target_ids][:6]
            if scored:
                retrieval_grid(dataset, result.rankings, scored, out / "retrieval_grid.png")
        log.info("wrote %s (metrics.json with provenance, rankings.json%s)", out, ", pictures" if args.plots else "")
    return 0


COMMANDS.register("eval")(Command(
    "evaluate a model or a baseline with the benchmark's official protocol", _add, _run,
    example="opencir eval --model runs/x/best --dataset cirr --root data/cirr --split val --out eval/ --plots"))
