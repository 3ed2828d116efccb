"""``opencir data synth``: generate the cir-shapes synthetic benchmark."""
from __future__ import annotations

import argparse

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the scenes and triplets")
    parser.add_argument("--train", type=int, default=20000, help="training triplets")
    parser.add_argument("--val", type=int, default=1000, help="validation triplets")
    parser.add_argument("--test", type=int, default=2000, help="test triplets")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square images in pixels")
    parser.add_argument("--workers", type=int, default=2, help="processes drawing images")


def _run(args: argparse.Namespace) -> int:
    from ..data.synthetic import generate_cir_shapes

    for name in ("train", "val", "test", "image_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    root = generate_cir_shapes(args.out, args.seed, args.train, args.val, args.test, args.image_size, args.workers)
    print(f"wrote cir-shapes to {root}")
    return 0


COMMANDS.register("data synth")(Command("generate the cir-shapes synthetic benchmark", _add, _run,
                                         example="opencir data synth --out data/cir-shapes --train 2000 --val 200 --test 200"))
