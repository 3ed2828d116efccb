"""``opencir import-checkpoint``: a released official checkpoint -> an OpenCIR model directory.

The files are read by the method's safe official reader (``methods/official.py``: no
pickled code runs), the backbone gets the activation of the official CLIP (OpenAI
weights: QuickGELU), and the result is saved as a normal model directory that ``eval``,
``index``, ``search`` and ``serve`` load. ``config.json`` records, under ``"imported"``,
every source file with its SHA-256 and size, and what each file loaded.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="official file(s): CLIP4Cir's tuned_clip_*.pt and/or combiner_*.pt, TG-CIR/OFFSET "
                             "best_model.pt (pickled model or state dict), Pic2Word/Context-I2W epoch_*.pt")
    parser.add_argument("--method", required=True, help="clip4cir, tg-cir, offset, pic2word or context-i2w")
    parser.add_argument("--out", required=True, help="the model directory to write")
    parser.add_argument("--arch", help="backbone architecture (default: the one the method released: "
                                       "RN50x4 / ViT-B-16 / ViT-H-14 / ViT-L-14)")
    parser.add_argument("--pretrained", help="backbone weights (tag or file) when the checkpoint has no CLIP "
                                             "weights (Pic2Word/Context-I2W without 'state_dict', a Combiner alone)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="method config value (repeatable), e.g. focus_channels=4 or global_tokens=4")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model directory")


def _run(args: argparse.Namespace) -> int:
    from ..backbones import BackboneSpec
    from ..commands.eval import parse_options
    from ..methods.base import METHODS
    from ..methods.io import build_method, save_model
    from ..methods import _import_all  # noqa: F401  (registers every method)
    from ..hashing import file_sha256

    cls = METHODS.get(args.method)
    if cls.official_quick_gelu is None:
        official = sorted(n for n in METHODS.names() if METHODS.get(n).official_quick_gelu is not None)
        raise ValueError(f"method {args.method!r} has no released official checkpoints; importable: {', '.join(official)}")
    paths = [Path(p).expanduser() for p in args.checkpoints]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"official {args.method} checkpoint not found: {path}"
                                    + (" (a directory: give the checkpoint file in it)" if path.is_dir() else ""))
    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    arch = args.arch or cls.official_arch
    config = {**cls.official_config(paths), **parse_options(args.config)}
    method = build_method(args.method, BackboneSpec(arch, args.pretrained or None), config)
    reports = method.import_official(paths)
    sources = [{"file": p.name, "path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
               for p in paths]
    imported = {"method": args.method, "sources": sources, "loaded": _jsonable(reports),
                "quick_gelu": method.backbone.uses_quick_gelu}
    save_model(method.eval(), out, extra={"imported": imported})
    for source in sources:
        print(f"{source['file']}: sha256 {source['sha256']}")
    print(f"wrote {out} ({args.method}, backbone {arch}, "
          f"{'QuickGELU' if imported['quick_gelu'] else 'GELU'})")
    return 0


def _jsonable(value: object) -> object:
    """Reports as JSON (keys of loaded tensors, counts, names)."""
    return json.loads(json.dumps(value, default=str))


COMMANDS.register("import-checkpoint")(
    Command("convert a released official checkpoint into an OpenCIR model directory", _add, _run,
            example="opencir import-checkpoint --method tg-cir best_model.pt --out models/tg-cir")
)
