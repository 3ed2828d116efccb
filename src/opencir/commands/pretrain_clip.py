"""``opencir pretrain-clip``: contrastive image-caption training of a small CLIP on cir-shapes."""
from __future__ import annotations

import argparse

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a cir-shapes folder (opencir data synth --out DIR)")
    parser.add_argument("--out", required=True, help="checkpoint file to write (open_clip state dict)")
    parser.add_argument("--arch", default="small-vit")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps before the cosine decay")
    parser.add_argument("--seed", type=int, default=0, help="same seed + same thread count = bit-identical checkpoint on CPU")
    parser.add_argument("--run-dir", help="training run folder (default: next to --out)")


def _run(args: argparse.Namespace) -> int:
    from ..training.run import pretrain_small_clip

    path = pretrain_small_clip(args.data, args.out, arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
                               lr=args.lr, seed=args.seed, run_dir=args.run_dir,
                               warmup_steps=args.warmup_steps)
    print(f"wrote {path}")
    return 0


COMMANDS.register("pretrain-clip")(Command("pretrain a small CLIP on cir-shapes captions (offline)", _add, _run))
