"""``opencir demo``: the offline end-to-end pipeline on the synthetic benchmark."""
from __future__ import annotations

import argparse

from . import COMMANDS, DEVICE_HELP, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="opencir-demo", help="folder for data, runs and results")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--methods", default="", help="comma-separated extra methods to train from their "
                        "<name>-cirshapes recipes and add to the table (e.g. tg-cir,offset,pic2word,context-i2w,nsfse; "
                        "'all' for every one); each adds minutes")


def _run(args: argparse.Namespace) -> int:
    from ..demo import EXTRA_METHODS, DemoSettings, run_demo

    names = EXTRA_METHODS if args.methods == "all" else tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(set(names) - set(EXTRA_METHODS))
    if unknown:
        raise ValueError(f"--methods: no cir-shapes recipe for {unknown}; choose from {', '.join(EXTRA_METHODS)}")
    run_demo(args.workdir, DemoSettings(extra_methods=names), device=args.device)
    return 0


COMMANDS.register("demo")(Command("run the offline demo: cir-shapes, small CLIP, baselines, CLIP4Cir", _add, _run,
                                  example="opencir demo --workdir opencir-demo --methods tg-cir"))
