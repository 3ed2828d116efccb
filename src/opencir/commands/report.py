"""``opencir report RUN_OR_EVAL_DIR [--out report.html]``: one self-contained HTML page."""
from __future__ import annotations

import argparse

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="RUN_OR_EVAL_DIR",
                        help="a demo folder, an evaluation folder (opencir eval --out) or a training run")
    parser.add_argument("--out", help="HTML file to write (default: RUN_OR_EVAL_DIR/report.html)")


def _run(args: argparse.Namespace) -> int:
    from ..evaluation.report import write_report

    print(f"wrote {write_report(args.path, args.out)}")
    return 0


COMMANDS.register("report")(Command("write one self-contained HTML report of a run, an evaluation or the demo",
                                    _add, _run))
