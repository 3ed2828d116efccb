"""``opencir data check``: validate a benchmark's layout and every image it refers to."""
from __future__ import annotations

import argparse

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="registered dataset name (cirr, fashioniq, shoes, circo, ...)")
    parser.add_argument("--root", required=True, help="the dataset folder, laid out as its authors publish it")
    parser.add_argument("--split", help="one split (default: every split of the dataset)")
    parser.add_argument("--option", action="append", default=[], help="dataset option key=value (repeatable)")
    parser.add_argument("--full", action="store_true", help="decode every image fully (default: header + verify)")
    parser.add_argument("--workers", type=int, default=4, help="threads reading images")
    parser.add_argument("--examples", type=int, default=5, help="problems listed per kind")


def _run(args: argparse.Namespace) -> int:
    from ..commands.eval import parse_options
    from ..data.check import check_images, dataset_splits, load_annotations_only

    splits = [args.split] if args.split else list(dataset_splits(args.dataset))
    options = parse_options(args.option)
    failed = 0
    for split in splits:
        try:
            dataset = load_annotations_only(args.dataset, args.root, split, **options)
        except (FileNotFoundError, ValueError, KeyError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"{args.dataset}/{split}: layout error: {message}")
            failed += 1
            continue
        report = check_images(dataset, full=args.full, workers=args.workers)
        print(f"{report.summary(args.examples)}  [{len(dataset.triplets)} queries, {len(dataset.gallery_ids)} gallery images]")
        failed += 0 if report.ok else 1
    print("OK" if not failed else f"{failed} of {len(splits)} split(s) have problems")
    return 1 if failed else 0


COMMANDS.register("data check")(Command("validate a benchmark layout and report missing or unreadable images", _add, _run))
