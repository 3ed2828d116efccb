"""``opencir index``: embed a catalogue with a model's target encoder into an index directory.

Under ``torchrun --nproc_per_node N -m opencir index ...`` the shards are encoded by N
ranks; rank 0 writes and commits one index, equal to a single-process one."""
from __future__ import annotations

import argparse
import json
import sys

from ..encoding.precision import CHOICES as PRECISION_CHOICES
from . import COMMANDS, DEVICE_HELP, Command, positive_int


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="index directory (created, or updated when it exists)")
    parser.add_argument("--model", help="saved model directory or hf-hub:ORG/NAME whose target encoder embeds the images")
    parser.add_argument("--images", help="image folder or manifest .csv (columns: path[,image_id][,mask_path][,metadata...]; id is accepted for image_id)")
    parser.add_argument("--backend", help="exact (default) | faiss | milvus; only when the index is created")
    parser.add_argument("--factory", help="FAISS factory string for --backend faiss, e.g. IVF1024,Flat or HNSW32")
    parser.add_argument("--option", action="append", default=[], help="backend option key=value (repeatable), "
                        "e.g. nprobe=32, ef_search=128, uri=http://host:19530, index_type=IVF_FLAT")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per resumable shard")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per encoder call")
    parser.add_argument("--num-workers", type=int, default=0, help="image loading processes")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                        help="encoder compute precision; auto: bf16 on CPUs with native bf16, else fp32")
    parser.add_argument("--delete", action="append", default=[], metavar="ID", help="remove an image id (repeatable)")
    parser.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                        help="unreadable images: skip them and list them in OUT/ingest-report.json (default), "
                        "or stop at the first one")
    parser.add_argument("--reference-features", choices=["auto", "on", "off"], default="auto",
                        help="store each image's reference-side features so queries by id skip the image "
                        "encoder (auto: when they are small); applies when the index is created")
    parser.add_argument("--verify", action="store_true",
                        help="check every file of the index at --out against its recorded SHA-256 and exit")
    parser.add_argument("--target-recall", type=float, metavar="R", help="tune the approximate index's nprobe / "
                        "ef_search for recall@10 >= R on a sample of its own vectors and store it (alone: retune)")
    parser.add_argument("--tune-sample", type=int, default=500, help="held-out vectors used by --target-recall")


def _run(args: argparse.Namespace) -> int:
    from ..retrieval.indexing import delete_images, index_catalogue

    if args.verify:
        if args.model or args.images or args.delete:
            raise ValueError("--verify is used on its own: opencir index --out IDX --verify")
        from ..retrieval.store import verify_index

        print(json.dumps(verify_index(args.out), indent=2))
        return 0
    if args.target_recall is not None:
        from ..retrieval.tuning import check_target

        check_target(args.target_recall)  # refuse a bad target before any encoding
    if args.delete:
        if args.model or args.images:
            raise ValueError("--delete is used on its own: run adding and deleting as two commands")
        count = delete_images(args.out, args.delete)
        print(f"deleted {len(set(args.delete))} images; {args.out} now holds {count}")
        return 0
    if args.target_recall is not None and not args.model and not args.images:
        print(json.dumps(_tune(args), indent=2))
        return 0
    if not args.model or not args.images:
        raise ValueError("give --model DIR|hf-hub:ORG/NAME and --images DIR|manifest.csv (or --delete ID to remove images)")
    from ..methods.hub import load_model  # a directory or an hf-hub: name
    from ..retrieval.catalogue import read_catalogue
    from ..training.distributed import init_distributed
    from ..training.trainer import resolve_device
    from .eval import parse_options

    options = parse_options(args.option)
    if args.factory:
        if (args.backend or "exact") != "faiss":
            raise ValueError("--factory needs --backend faiss")
        options["factory"] = args.factory
    context = init_distributed(args.device)  # under torchrun: the catalogue is encoded across ranks
    device = context.device if context.distributed else resolve_device(args.device)
    catalogue = read_catalogue(args.images, args.on_error)
    method = load_model(args.model, device=device)
    report = index_catalogue(method, catalogue, args.out, args.backend, options, args.shard_size,
                             args.batch_size, device, args.num_workers, model_dir=args.model,
                             precision=args.precision, sharding=context, on_error=args.on_error,
                             reference_features=args.reference_features)
    if not context.is_main:
        return 0
    summary = {
        "index": str(report.index_dir), "added": report.added, "already_indexed": report.already_indexed,
        "encoded_shards": report.encoded_shards, "resumed_shards": report.reused_shards, "total": report.total,
        "skipped": len(report.skipped), "report": str(report.report_file),
        "reference_features": report.reference_features,
    }
    if args.target_recall is not None:
        summary.update(_tune(args))
    print(json.dumps(summary, indent=2))  # one JSON document on stdout
    return 0


def _tune(args: argparse.Namespace) -> dict:
    """Tune the index for ``--target-recall``; returns ``{"tuning": summary}`` for the JSON output."""
    from ..retrieval.tuning import tune_index

    report = tune_index(args.out, args.target_recall, sample=args.tune_sample)
    summary = {k: v for k, v in report.to_dict().items() if k != "curve"}
    if not report.met:
        print(f"warning: recall@{report.k} {report.recall:.3f} < target {report.target_recall} even at "
              f"{report.knob}={report.chosen} (the most this index allows); rebuild with more lists or a larger graph",
              file=sys.stderr)  # stdout holds only the JSON
    return {"tuning": summary}


COMMANDS.register("index")(Command("embed an image folder or manifest.csv into a search index", _add, _run,
                                   example="opencir index --model runs/x/best --images catalogue/ --out catalogue.idx"))
