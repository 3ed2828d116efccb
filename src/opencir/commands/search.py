"""``opencir search``: composed-image search of an index from the command line."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory built by `opencir index`")
    parser.add_argument("--model", help="model directory (default: the one recorded in the index)")
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--image", help="reference image file")
    reference.add_argument("--ref-id", help="reference image id in the index")
    parser.add_argument("--text", required=True, help="modification text, e.g. 'make it red'")
    parser.add_argument("-k", type=int, default=10, help="number of results")
    parser.add_argument("--include-reference", action="store_true", help="do not exclude the reference image")
    parser.add_argument("--exclude", action="append", default=[], metavar="ID", help="never return this id (repeatable)")
    parser.add_argument("--filter", action="append", default=[], metavar="COND",
                        help="keep images whose metadata passes (repeatable, ANDed): color=red, price<50, "
                        "year>=2020, brand=nike|adidas, or a JSON object {\"price\": {\"lt\": 50}}")
    parser.add_argument("--target-recall", type=float, help="search effort of a tuned approximate index for "
                        "this recall@10 (from the curve `opencir index --target-recall` stored)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default="auto")


def _run(args: argparse.Namespace) -> int:
    from ..retrieval.retriever import Retriever
    from ..retrieval.store import read_manifest
    from ..training.trainer import resolve_device

    model = args.model or read_manifest(args.index).get("model", {}).get("directory")
    if not model:
        raise ValueError("give --model DIR: the model that built the index")
    with Retriever(args.index, model, device=resolve_device(args.device)) as retriever:
        reference = Path(args.image) if args.image else args.ref_id
        result = retriever.search(reference, args.text, args.k, exclude_reference=not args.include_reference,
                                  exclude=args.exclude, filter=args.filter or None, target_recall=args.target_recall)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"{'rank':>4}  {'score':>7}  {'id':<32}  path")
    for hit in result.hits:
        print(f"{hit.rank:>4}  {hit.score:7.4f}  {hit.image_id:<32}  {hit.path}")
    return 0


COMMANDS.register("search")(Command("search an index with a reference image and a modification text", _add, _run))
