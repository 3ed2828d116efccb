"""``opencir train --config X.yaml key=value ...``: train any registered method.

The same command under ``torchrun --nproc_per_node N -m opencir train ...`` trains
data-parallel on N ranks (docs/training.md); ``train.batch_size`` stays the global batch."""
from __future__ import annotations

import argparse
import json

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config: a file or a shipped recipe name (src/opencir/recipes)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 method_config.stage=combiner")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a last checkpoint exists")


def _run(args: argparse.Namespace) -> int:
    from ..training.run import run_training

    summary = run_training(args.config, args.overrides, resume=not args.no_resume)
    if summary.get("rank", 0) == 0:  # under torchrun: rank 0 reports for the job
        print(json.dumps(summary, indent=2))
    return 0


COMMANDS.register("train")(Command("train a method (one trainer for every method and dataset)", _add, _run))
