"""``opencir submission``: evaluation-server files (CIRR test1, CIRCO test) from rankings."""
from __future__ import annotations

import argparse

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="cirr or circo")
    parser.add_argument("--root", required=True, help="the dataset folder (images are not needed)")
    parser.add_argument("--split", required=True, help="test1 (CIRR) or test (CIRCO); val works for checking")
    parser.add_argument("--rankings", required=True, help='JSON {"<query id>": [ranked image ids, best first]}')
    parser.add_argument("--subset-rankings", help="CIRR: JSON of rankings within img_set (else taken from --rankings)")
    parser.add_argument("--out", required=True, help="folder for the submission file(s)")
    parser.add_argument("--tag", default="opencir", help="suffix of the file names")


def _run(args: argparse.Namespace) -> int:
    from ..data.check import load_annotations_only
    from ..data.submission import write_submission
    from ..evaluation.protocols import read_rankings

    dataset = load_annotations_only(args.dataset, args.root, args.split)
    rankings = read_rankings(args.rankings)
    subsets = read_rankings(args.subset_rankings) if args.subset_rankings else None
    for path in write_submission(dataset, rankings, args.out, subsets, args.tag):
        print(f"wrote {path}")
    return 0


COMMANDS.register("submission")(Command("write evaluation-server submission files from a rankings file", _add, _run,
                                        example="opencir submission cirr --root data/cirr --split test1 --rankings eval/rankings.json --out server/"))
