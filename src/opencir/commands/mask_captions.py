"""``opencir mask-captions``: the offline step of Context-I2W training (spec 4.2.4).

Reads the image records of any registered dataset (by default an ``image-captions``
corpus: CSV/TSV, image folder or webdataset shards) and writes a TSV with the columns
``filepath``, ``caption`` and ``masked_caption`` (the caption's subject noun phrase
replaced by ``<|replace|>``). Train on it with
``dataset.name=image-captions dataset.options.source=<out> dataset.options.caption_column=masked_caption``.
"""
from __future__ import annotations

import argparse

from . import COMMANDS, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="dataset root (a corpus file or folder for image-captions)")
    parser.add_argument("--out", required=True, help="TSV file to write")
    parser.add_argument("--dataset", default="image-captions", help="registered dataset whose image captions to mask")
    parser.add_argument("--split", default="train", help="split of the dataset to read")
    parser.add_argument("--option", action="append", default=[], help="dataset option key=value (repeatable)")
    parser.add_argument("--column", default="masked_caption", help="name of the masked-caption column")
    parser.add_argument("--masker", default="auto", help="auto (spaCy if installed, else rules), spacy or fallback")
    parser.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy pipeline for --masker spacy/auto")
    parser.add_argument("--batch-size", type=int, default=1024, help="captions masked per batch")


def _run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data import load_dataset
    from ..data.corpora import write_table
    from ..nlp.masking import PLACEHOLDER, build_masker
    from .eval import parse_options

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    dataset = load_dataset(args.dataset, args.root, args.split, **parse_options(args.option))
    masker = build_masker(args.masker, PLACEHOLDER, args.spacy_model)
    records = tqdm(dataset.images.values(), desc=f"mask captions ({type(masker).__name__})", unit=" captions",
                   disable=None)
    count = write_table(records, args.out, lambda batch: {args.column: masker([r.caption or "" for r in batch])},
                        args.batch_size)
    print(f"wrote {count} masked captions to {args.out}")
    return 0


COMMANDS.register("mask-captions")(Command(
    "mask the subject of each caption with <|replace|> (Context-I2W)", _add, _run,
    example="opencir mask-captions --root /data/cc3m --option source=cc3m.csv --option caption_column=title "
            "--out /data/cc3m/cc3m-masked.tsv"))
