"""``opencir masks``: dominant-portion masks for OFFSET, once per dataset (spec 5.2).

Captions every image (``--captioner``), segments what the caption names
(``--segmenter``), and writes soft 8-bit masks under the official file names; masks
already on disk are kept, so a stopped run resumes. ``--from-released DIR`` instead
validates the officially released masks and links (or copies) them into place.
cir-shapes ships its exact ground-truth masks: nothing is left to write there.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import COMMANDS, Command

DEFAULT_SPLITS = ("train", "val", "test")


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="registered dataset name (fashioniq, shoes, cirr, cir-shapes)")
    parser.add_argument("--root", required=True, help="the dataset folder")
    parser.add_argument("--split", action="append", default=[], help="split to cover (repeatable; default: all)")
    parser.add_argument("--option", action="append", default=[], help="dataset option key=value (repeatable)")
    parser.add_argument("--captioner", default="blip", help="registered captioner: blip, record, fixed")
    parser.add_argument("--captioner-model", help="captioning model name or folder (blip)")
    parser.add_argument("--prompt", help="the fixed caption (fixed), fallback caption (record) or BLIP prefix (blip)")
    parser.add_argument("--segmenter", default="clipseg", help="registered segmenter: clipseg")
    parser.add_argument("--segmenter-model", help="segmentation model name or folder (default CIDAS/clipseg-rd64-refined)")
    parser.add_argument("--from-released", metavar="DIR", help="use the officially released masks in DIR instead")
    parser.add_argument("--link", default="symlink", choices=("symlink", "hardlink", "copy"),
                        help="how --from-released puts a mask in place")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace masks that already exist")
    parser.add_argument("--resize-to-image", action="store_true",
                        help="store masks at the image size (default: the segmenter's size, as released)")
    parser.add_argument("--captions-out", help="write the caption used for each image to this JSON file")


def _default_splits(dataset: str) -> tuple[str, ...]:
    from ..data.check import dataset_splits

    return dataset_splits(dataset, DEFAULT_SPLITS)


def _load_splits(args: argparse.Namespace) -> list:
    from ..data import load_dataset
    from .eval import parse_options

    options = parse_options(args.option)
    splits = args.split or list(_default_splits(args.dataset))
    datasets, skipped = [], []
    for split in splits:
        try:
            datasets.append(load_dataset(args.dataset, args.root, split, **options))
        except FileNotFoundError as err:  # e.g. CIRR's train captions are not downloaded
            if args.split:  # asked for explicitly: a real error
                raise
            skipped.append(f"{split} ({err})")
    for item in skipped:
        print(f"skipped split {item}", file=sys.stderr)
    if not datasets:
        raise ValueError(f"no split of {args.dataset} could be read under {args.root}")
    return datasets


def _run(args: argparse.Namespace) -> int:
    from ..masks import build_captioner, build_segmenter, import_released, plan_masks, write_masks
    from ..training.trainer import resolve_device

    jobs = plan_masks(_load_splits(args))
    print(f"{len(jobs)} images need masks")
    if args.from_released:
        report = import_released(jobs, args.from_released, args.link, args.overwrite)
    else:
        pending = [j for j in jobs if args.overwrite or not j.mask_path.is_file()]
        if not pending:
            print(f"all {len(jobs)} masks are present; nothing to do (use --overwrite to regenerate)")
            return 0
        device = str(resolve_device(args.device))
        captioner = build_captioner(args.captioner, args.captioner_model, device, args.prompt)
        segmenter = build_segmenter(args.segmenter, args.segmenter_model, device)
        report = write_masks(jobs, captioner, segmenter, args.batch_size, args.overwrite, args.resize_to_image)
        if args.captions_out:
            Path(args.captions_out).write_text(json.dumps(report.captions, indent=1, sort_keys=True))
    print(report.summary(), file=sys.stderr if report.failures else sys.stdout)
    return 1 if report.failures else 0


COMMANDS.register("masks")(Command("write OFFSET's dominant-portion masks for a dataset (or adopt released ones)", _add, _run))
