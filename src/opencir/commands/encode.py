"""``opencir encode``: gallery or composed-query vectors to a .npy or .parquet file."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..encoding.precision import CHOICES as PRECISION_CHOICES
from . import COMMANDS, Command

if TYPE_CHECKING:
    import numpy as np

    from ..methods.base import CIRMethod
    from ..retrieval.catalogue import Catalogue
    from ..retrieval.query_files import QueryLine

EPILOG = """examples:
  opencir encode --model runs/x/best --images catalogue/ --out gallery.parquet
  opencir encode --model hf-hub:org/name --queries queries.jsonl --images catalogue/ --out queries.npy

--queries takes the query files of `opencir search` (.jsonl or .csv, see docs/serving.md), e.g.
  {"query_id": "q1", "image": "ref.jpg", "text": "make it red"}
  {"query_id": "q2", "ref_id": "shoes/red_01", "texts": ["blue", {"text": "with laces", "weight": 0.3}]}
("image" relative to the file's folder; "ref_id" an id of the --images catalogue)."""


def _add(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--model", required=True, help="model directory or hf-hub:ORG/NAME")
    parser.add_argument("--images", help="image folder or manifest .csv: the gallery to encode, or the "
                        "catalogue that queries' image_id refer to")
    parser.add_argument("--queries", help="composed queries: a .jsonl or .csv query file, as for `opencir search`")
    parser.add_argument("--out", required=True, help="output file: .npy (+ .ids.json) or .parquet")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: auto)")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                        help="encoder compute precision, as for `opencir index` (whose vectors these equal at the "
                             "same setting); auto: bf16 on CPUs with native bf16, else fp32 (default: auto)")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) for an hf-hub: model")


def _run(args: argparse.Namespace) -> int:
    from ..api import load_model
    from ..encoding.precision import autocast, resolve_precision
    from ..retrieval.catalogue import read_catalogue
    from ..retrieval.query_files import read_queries
    from ..training.trainer import resolve_device
    from ..vectors import write_vectors

    if not args.images and not args.queries:
        raise ValueError("give --images DIR|manifest.csv (gallery vectors) and/or --queries q.jsonl (query vectors)")
    if Path(args.out).suffix.lower() not in (".npy", ".parquet"):
        raise ValueError(f"--out {args.out}: choose a .npy or .parquet file name")
    catalogue = read_catalogue(args.images) if args.images else None
    queries = read_queries(args.queries) if args.queries else None
    if queries:
        _check_reference_ids(queries, catalogue, args.queries)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    model = load_model(args.model, device=device, revision=args.revision)
    meta: dict[str, Any] = {"model": str(args.model), "method": model.name, "kind": "queries" if queries else "gallery",
                            "precision": precision}
    with autocast(precision, device):  # as `opencir index` encodes; outputs are float32 either way
        vectors, columns = _encode(model, catalogue, queries, args.batch_size)
    files = write_vectors(args.out, vectors, columns, {**meta, "dim": int(vectors.shape[1])})
    print(json.dumps({**meta, "count": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
                      "files": [str(f) for f in files]}, indent=2))
    return 0


def _check_reference_ids(queries: list["QueryLine"], catalogue: "Catalogue | None", source: str) -> None:
    """Every ``ref_id`` of the queries must be an image of the ``--images`` catalogue."""
    known = {e.image_id for e in catalogue.entries} if catalogue is not None else set()
    for line in queries:
        for image_id in line.spec.reference_ids:
            if image_id not in known:
                hint = "" if catalogue is not None else " (give --images DIR|manifest.csv)"
                raise ValueError(f"{source}: query {line.query_id}: ref_id {image_id!r} is not in the --images "
                                 f"catalogue{hint}")


def _query_vectors(model: "CIRMethod", queries: list["QueryLine"], catalogue: "Catalogue | None",
                   batch_size: int) -> "np.ndarray":
    """One vector per query: every (reference, text) pair composed by ``encode_queries``,
    then weighted and negative texts combined as ``opencir search`` does (a plain query is
    its single pair)."""
    import torch

    from ..retrieval.query import combine, negative_text_embedding

    pairs = [(r.value, t.value) for line in queries for r in line.spec.references for t in line.spec.texts]
    composed = model.encode_queries([p[0] for p in pairs], [p[1] for p in pairs], catalogue=catalogue,
                                    batch_size=batch_size, progress=None, convert_to_numpy=False)
    vectors, start = [], 0
    for line in queries:
        spec = line.spec
        count = len(spec.references) * len(spec.texts)
        with torch.no_grad():
            negatives = negative_text_embedding(model, [n.value for n in spec.negative_texts]).cpu() \
                if spec.negative_texts else None
        vectors.append(combine(spec, composed[start:start + count], negatives))
        start += count
    return torch.stack(vectors).float().numpy()


def _encode(model: "CIRMethod", catalogue: "Catalogue | None", queries: list["QueryLine"] | None,
            batch_size: int) -> tuple["np.ndarray", dict[str, list[str]]]:
    """Vectors and their id columns: the queries when given, else the catalogue's images."""
    if queries:
        columns = {"query_id": [q.query_id for q in queries],
                   "reference": [" + ".join(str(r.value) for r in q.spec.references) for q in queries],
                   "text": [q.spec.describe() for q in queries]}
        return _query_vectors(model, queries, catalogue, batch_size), columns
    entries = catalogue.entries
    vectors = model.encode_gallery([e.image_id for e in entries], catalogue=catalogue, batch_size=batch_size,
                                   progress=None)
    return vectors, {"image_id": [e.image_id for e in entries]}


COMMANDS.register("encode")(Command("encode gallery images or composed queries to a .npy/.parquet vector file", _add, _run))
