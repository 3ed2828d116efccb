"""``opencir demo``: the offline end-to-end pipeline on the synthetic benchmark."""
from __future__ import annotations

import argparse

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="opencir-demo", help="folder for data, runs and results")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="first training seed (same seed + same thread "
                        "count = identical table on CPU)")
    parser.add_argument("--seeds", type=int, default=1, help="run every training stage with this many seeds "
                        "(seed, seed+1, ...) and report mean ± standard deviation; each seed adds the demo's time")
    parser.add_argument("--methods", default="", help="comma-separated extra methods to train from their "
                        "<name>-cirshapes recipes and add to the table (e.g. tg-cir,offset,pic2word,context-i2w,nsfse; "
                        "'all' for every one); each adds minutes")


def _run(args: argparse.Namespace) -> int:
    from ..demo import EXTRA_METHODS, DemoSettings, run_demo

    names = EXTRA_METHODS if args.methods == "all" else tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(set(names) - set(EXTRA_METHODS))
    if unknown:
        raise ValueError(f"--methods: no cir-shapes recipe for {unknown}; choose from {', '.join(EXTRA_METHODS)}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    run_demo(args.workdir, DemoSettings(seed=args.seed, extra_methods=names), device=args.device,
             seeds=range(args.seed, args.seed + args.seeds))
    return 0


COMMANDS.register("demo")(Command("run the offline demo: cir-shapes, small CLIP, baselines, CLIP4Cir", _add, _run))
