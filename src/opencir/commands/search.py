"""``opencir search``: composed-image search of an index from the command line.

One query from flags (``--ref-id``/``--image``, ``--text``, ``--not``; each repeatable),
from a JSON spec (``--query``), or many from a file (``--queries q.jsonl|q.csv --out
rankings.json``) with one model load and batched encoding.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import COMMANDS, DEVICE_HELP, Command, positive_int


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory built by `opencir index`")
    parser.add_argument("--model", help="model directory or hf-hub:ORG/NAME (default: the one recorded in the index)")
    parser.add_argument("--ref-id", action="append", default=[], metavar="ID",
                        help="reference image id in the index (repeatable: several references)")
    parser.add_argument("--image", action="append", default=[], metavar="FILE",
                        help="reference image file (repeatable)")
    parser.add_argument("--text", action="append", default=[], help="modification text, e.g. 'make it red' (repeatable)")
    parser.add_argument("--not", dest="negative", action="append", default=[], metavar="TEXT",
                        help="negative text the results should not match, e.g. 'striped' (repeatable; weight 0.5)")
    parser.add_argument("--query", metavar="JSON", help='a query spec, e.g. \'{"references": ["a", "b"], "texts": '
                        '[{"text": "red", "weight": 2}], "negative_texts": ["striped"]}\'')
    parser.add_argument("--queries", metavar="FILE", help="many queries: a .jsonl or .csv file (see docs/serving.md)")
    parser.add_argument("--out", help="with --queries: write rankings JSON {query_id: [ids, best first]}")
    parser.add_argument("-k", type=int, default=10, help="number of results")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="with --queries: queries encoded together")
    parser.add_argument("--include-reference", action="store_true", help="do not exclude the reference image(s)")
    parser.add_argument("--exclude", action="append", default=[], metavar="ID", help="never return this id (repeatable)")
    parser.add_argument("--filter", action="append", default=[], metavar="COND",
                        help="keep images whose metadata passes (repeatable, ANDed): color=red, price<50, "
                        "year>=2020, brand=nike|adidas, or a JSON object {\"price\": {\"lt\": 50}}; with --queries: every query")
    parser.add_argument("--target-recall", type=float, help="search effort of a tuned approximate index for "
                        "this recall@10 (from the curve `opencir index --target-recall` stored)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def _single_spec(args: argparse.Namespace):
    from ..retrieval.query import DEFAULT_NEGATIVE_WEIGHT, QuerySpec, Weighted, check_text, spec_from_dict

    flags = bool(args.ref_id or args.image or args.text or args.negative)
    if args.query:
        if flags:
            raise ValueError("give either --query or the --ref-id/--image/--text/--not flags")
        try:
            payload = json.loads(args.query)
        except ValueError as err:
            raise ValueError(f"--query is not valid JSON: {err}") from None
        return spec_from_dict(payload, Path, "--query")
    if not (args.ref_id or args.image):
        raise ValueError("give a reference: --ref-id ID or --image FILE (or --query / --queries)")
    if not args.text:
        raise ValueError("give a modification text: --text '...'")
    for image in args.image:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image not found: {image}")
    references = [Weighted(i) for i in args.ref_id] + [Weighted(Path(i)) for i in args.image]
    return QuerySpec(tuple(references), tuple(Weighted(check_text(t)) for t in args.text),
                     tuple(Weighted(check_text(t), DEFAULT_NEGATIVE_WEIGHT) for t in args.negative))


def _print_table(result) -> None:
    print(f"{'rank':>4}  {'score':>7}  {'image_id':<32}  path")
    for hit in result.hits:
        print(f"{hit.rank:>4}  {hit.score:7.4f}  {hit.image_id:<32}  {hit.path}")


def _run(args: argparse.Namespace) -> int:
    from ..retrieval.filters import parse_filter
    from ..retrieval.query import QueryFailed
    from ..retrieval.tuning import check_target
    from ..retrieval.query_files import read_queries
    from ..retrieval.retriever import Retriever
    from ..retrieval.store import read_manifest
    from ..training.trainer import resolve_device

    if args.k < 1:
        raise ValueError(f"-k must be a positive integer, got {args.k}")
    if args.queries:
        if args.ref_id or args.image or args.text or args.negative or args.query:
            raise ValueError("--queries runs the queries of a file: drop --ref-id/--image/--text/--not/--query")
        lines = read_queries(args.queries)  # every line checked before the model loads
    else:
        if args.out:
            raise ValueError("--out writes the rankings of --queries; for one query use --json")
        spec = _single_spec(args)
    parse_filter(args.filter or None)  # bad filters and targets are refused before the model loads
    if args.target_recall is not None:
        check_target(args.target_recall)
    model = args.model or read_manifest(args.index).get("model", {}).get("directory")
    if not model:
        raise ValueError("give --model DIR: the model that built the index")
    with Retriever(args.index, model, device=resolve_device(args.device)) as retriever:
        options = retriever.search_options(args.filter or None, args.target_recall)  # before any encoding
        if not args.queries:
            result = retriever.search_many([spec], args.k, not args.include_reference, [args.exclude],
                                           options=[options])[0]
            if args.json:
                print(json.dumps(result.to_dict(), indent=2))
            else:
                _print_table(result)
            return 0
        try:
            results = retriever.search_many([line.spec for line in lines], [line.k or args.k for line in lines],
                                            exclude_reference=not args.include_reference,
                                            exclude=[args.exclude] * len(lines), batch_size=args.batch_size,
                                            options=[options] * len(lines))
        except QueryFailed as err:
            message = err.error.args[0] if err.error.args else err.error
            raise ValueError(f"{args.queries}: query {lines[err.position].query_id!r}: {message}") from None
    rankings = {line.query_id: [hit.image_id for hit in result.hits] for line, result in zip(lines, results)}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rankings, indent=1))
    if args.json:
        print(json.dumps({line.query_id: result.to_dict() for line, result in zip(lines, results)}, indent=2))
    elif not args.out:
        print(json.dumps(rankings, indent=1))
    else:
        print(f"wrote the rankings of {len(lines)} queries to {args.out}", file=sys.stderr)
    return 0


COMMANDS.register("search")(Command("search an index with reference image(s) and modification text(s); "
                                    "--queries for many", _add, _run,
                                    example='opencir search --index catalogue.idx --image query.jpg --text "same but in red" -k 10 --json'))
