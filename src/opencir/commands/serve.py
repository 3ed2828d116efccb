"""``opencir serve``: the HTTP search service and its web page (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse

from . import COMMANDS, DEVICE_HELP, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory built by `opencir index`")
    parser.add_argument("--model", help="model directory (default: the one recorded in the index)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1 keeps it local)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload")
    parser.add_argument("--max-k", type=int, default=100, help="largest k a request may ask for")
    parser.add_argument("--max-text-chars", type=int, default=500, help="longest accepted modification text")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (debug, info, warning, error)")


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..serving.app import ServeSettings, create_app

    settings = ServeSettings(device=args.device, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                             max_k=args.max_k, max_text_chars=args.max_text_chars)
    app = create_app(args.index, args.model, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


COMMANDS.register("serve")(Command("serve the search API and web page over an index", _add, _run,
                                   example="opencir serve --index catalogue.idx --port 8000   # then open http://127.0.0.1:8000/"))
