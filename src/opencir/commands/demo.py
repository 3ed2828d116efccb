"""``opencir demo``: the offline end-to-end pipeline on the synthetic benchmark."""
from __future__ import annotations

import argparse

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="opencir-demo", help="folder for data, runs and results")
    parser.add_argument("--device", default="auto")


def _run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.workdir, device=args.device)
    return 0


COMMANDS.register("demo")(Command("run the offline demo: cir-shapes, small CLIP, baselines, CLIP4Cir", _add, _run))
