"""``opencir train --config X.yaml key=value ...``: train any registered method.

The same command under ``torchrun --nproc_per_node N -m opencir train ...`` trains
data-parallel on N ranks (docs/training.md); ``train.batch_size`` stays the global batch.
``--seeds N`` repeats the run with seeds ``train.seed``, ``train.seed + 1``, ... into
``OUTPUT_DIR/seed-S`` and reports mean ± sample standard deviation of the best
validation metrics (written to ``OUTPUT_DIR/seeds.json``)."""
from __future__ import annotations

import argparse
import json

from . import COMMANDS, Command, positive_int


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config: a file or a shipped recipe name (src/opencir/recipes)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 method_config.stage=combiner "
                        "(with --seeds, {seed} in a value is replaced by each run's seed, e.g. "
                        "init_from=runs/s1/seed-{seed}/best)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a last checkpoint exists")
    parser.add_argument("--seeds", type=positive_int, default=1, help="train this many times with seeds train.seed, "
                        "train.seed+1, ... into OUTPUT_DIR/seed-S and report mean ± std of the best validation "
                        "metrics (OUTPUT_DIR/seeds.json)")


def _run(args: argparse.Namespace) -> int:
    from ..training.run import run_training, run_with_seeds

    if args.seeds > 1:
        summary = run_with_seeds(args.config, args.overrides, args.seeds, resume=not args.no_resume)
    else:
        summary = run_training(args.config, args.overrides, resume=not args.no_resume)
    if summary.get("rank", 0) == 0:  # under torchrun: rank 0 reports for the job
        print(json.dumps(summary, indent=2))
    return 0


COMMANDS.register("train")(Command("train a method (one trainer for every method and dataset)", _add, _run,
                                   example="opencir train --config clip4cir-cirshapes-stage1 dataset.root=opencir-demo/cir-shapes "
                                           "train.epochs=3 train.lr=1e-4\n"
                                           "opencir train --config clip4cir-cirshapes-stage1 dataset.root=opencir-demo/cir-shapes "
                                           "--seeds 3   # mean ± std over seeds"))
