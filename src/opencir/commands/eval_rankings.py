"""``opencir eval-rankings``: the official metrics of a rankings file, from any model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="registered dataset name")
    parser.add_argument("--root", required=True, help="the dataset folder (images are not needed)")
    parser.add_argument("--split", required=True, help="split the rankings are for (val, test, ...)")
    parser.add_argument("--rankings", required=True, help='JSON {"<query id>": [ranked image ids, best first]}')
    parser.add_argument("--subset-rankings", help="CIRR: JSON of rankings within img_set (else taken from --rankings)")
    parser.add_argument("--option", action="append", default=[], help="dataset option key=value (repeatable)")
    parser.add_argument("--out", help="also write the metrics to this JSON file")


def _run(args: argparse.Namespace) -> int:
    from ..commands.eval import parse_options
    from ..data.check import load_annotations_only
    from ..evaluation.protocols import evaluate_rankings, read_rankings

    dataset = load_annotations_only(args.dataset, args.root, args.split, **parse_options(args.option))
    rankings = read_rankings(args.rankings)
    subsets = read_rankings(args.subset_rankings) if args.subset_rankings else None
    metrics = evaluate_rankings(dataset, rankings, subsets)
    print(json.dumps(metrics, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0


COMMANDS.register("eval-rankings")(Command("score a rankings file with the benchmark's official protocol", _add, _run,
                                           example="opencir eval-rankings cirr --root data/cirr --split val --rankings eval/rankings.json"))
