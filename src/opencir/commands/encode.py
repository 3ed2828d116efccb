"""``opencir encode``: gallery or composed-query vectors to a .npy or .parquet file."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..encoding.precision import CHOICES as PRECISION_CHOICES
from . import COMMANDS, Command

EPILOG = """examples:
  opencir encode --model runs/x/best --images catalogue/ --out gallery.parquet
  opencir encode --model hf-hub:org/name --queries queries.jsonl --images catalogue/ --out queries.npy

queries.jsonl holds one JSON object per line: {"query_id": "q1", "image": "ref.jpg", "text": "make it red"}
("image" relative to the file's folder; or "image_id": an id of the --images catalogue)."""


@dataclass(frozen=True)
class Query:
    """One line of a queries file."""

    query_id: str
    reference: str
    text: str


def read_queries(path: str | Path, catalogue_ids: set[str]) -> list[Query]:
    """Parse a queries ``.jsonl`` file; every error names the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"queries file not found: {path}")
    queries: list[Query] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with 'image' (or 'image_id') and 'text'")
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: 'text' must be a non-empty string")
        if "image_id" in row:
            reference = str(row["image_id"])
            if reference not in catalogue_ids:
                raise ValueError(f"{where}: image_id {reference!r} is not in the --images catalogue"
                                 + ("" if catalogue_ids else " (give --images DIR|manifest.csv)"))
        elif isinstance(row.get("image"), str):
            image = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
            if not image.is_file():
                raise FileNotFoundError(f"{where}: image not found: {image}")
            reference = str(image)
        else:
            raise ValueError(f"{where}: give 'image' (a path) or 'image_id' (an id of the --images catalogue)")
        queries.append(Query(str(row.get("query_id", number)), reference, text.strip()))
    if not queries:
        raise ValueError(f"{path} holds no queries")
    return queries


def _add(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--model", required=True, help="model directory or hf-hub:ORG/NAME")
    parser.add_argument("--images", help="image folder or manifest .csv: the gallery to encode, or the "
                        "catalogue that queries' image_id refer to")
    parser.add_argument("--queries", help="composed queries, one JSON object per line (see below)")
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
    from ..training.trainer import resolve_device
    from ..vectors import write_vectors

    if not args.images and not args.queries:
        raise ValueError("give --images DIR|manifest.csv (gallery vectors) and/or --queries q.jsonl (query vectors)")
    if Path(args.out).suffix.lower() not in (".npy", ".parquet"):
        raise ValueError(f"--out {args.out}: choose a .npy or .parquet file name")
    catalogue = read_catalogue(args.images) if args.images else None
    ids = {e.image_id for e in catalogue.entries} if catalogue is not None else set()
    queries = read_queries(args.queries, ids) if args.queries else None
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


def _encode(model: Any, catalogue: Any, queries: list[Query] | None, batch_size: int) -> tuple[Any, dict[str, list[str]]]:
    """Vectors and their id columns: the queries when given, else the catalogue's images."""
    if queries:
        vectors = model.encode_queries([q.reference for q in queries], [q.text for q in queries], catalogue=catalogue,
                                       batch_size=batch_size, progress=None)
        columns = {"query_id": [q.query_id for q in queries], "reference": [q.reference for q in queries],
                   "text": [q.text for q in queries]}
    else:
        entries = catalogue.entries
        vectors = model.encode_gallery([e.image_id for e in entries], catalogue=catalogue, batch_size=batch_size,
                                       progress=None)
        columns = {"image_id": [e.image_id for e in entries]}
    return vectors, columns


COMMANDS.register("encode")(Command("encode gallery images or composed queries to a .npy/.parquet vector file", _add, _run))
