"""``opencir serve``: the HTTP search service and its web page (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse

from . import COMMANDS, DEVICE_HELP, Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory built by `opencir index`")
    parser.add_argument("--model", help="model directory or hf-hub:ORG/NAME (default: the one recorded in the index)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1 keeps it local)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--threads", type=int, help="torch and FAISS threads (default: their own defaults, "
                        "usually one per core)")
    parser.add_argument("--micro-batch", type=int, default=16, metavar="N",
                        help="encode up to N concurrent queries in one forward pass (1 turns batching off)")
    parser.add_argument("--micro-batch-wait-ms", type=float, default=3.0,
                        help="how long the first query of a batch waits for others")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted request body")
    parser.add_argument("--max-k", type=int, default=100, help="largest k a request may ask for")
    parser.add_argument("--max-text-chars", type=int, default=500, help="longest accepted modification text")
    parser.add_argument("--max-sessions", type=int, default=1000, help="multi-turn sessions kept in memory")
    parser.add_argument("--max-sessions-per-client", type=int, default=100,
                        help="sessions one remote address may hold (its oldest go first)")
    parser.add_argument("--body-timeout-s", type=float, default=30.0,
                        help="a request body must arrive within this time (else 408)")
    parser.add_argument("--shutdown-grace-s", type=float, default=10.0,
                        help="on SIGTERM/SIGINT, wait at most this long for open requests")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (debug, info, warning, error)")
    parser.add_argument("--admin-token-file", help="file holding the token that HTTP add/delete requests must send "
                        "(Authorization: Bearer ...); or set OPENCIR_ADMIN_TOKEN. Without one, add/delete is "
                        "open on loopback binds only")
    parser.add_argument("--lock-timeout", type=float, default=10.0,
                        help="seconds an HTTP add/delete waits for another writer before answering 409")


def _run(args: argparse.Namespace) -> int:
    import math

    import uvicorn

    from ..serving.admin import AdminSettings
    from ..serving.app import ServeSettings, create_app

    settings = ServeSettings(device=args.device, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                             max_k=args.max_k, max_text_chars=args.max_text_chars, max_sessions=args.max_sessions,
                             max_sessions_per_client=args.max_sessions_per_client, body_timeout_s=args.body_timeout_s,
                             shutdown_grace_s=args.shutdown_grace_s, micro_batch_size=args.micro_batch,
                             micro_batch_wait_ms=args.micro_batch_wait_ms, threads=args.threads)
    admin = AdminSettings(token=_admin_token(args.admin_token_file), loopback_only=is_loopback(args.host),
                          lock_timeout_s=args.lock_timeout)
    app = create_app(args.index, args.model, settings, admin)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1,
                timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace_s)))
    return 0


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def _admin_token(path: str | None) -> str | None:
    import os
    from pathlib import Path

    if path:
        token = Path(path).read_text().strip()
        if not token:
            raise ValueError(f"--admin-token-file {path} is empty")
        return token
    return os.environ.get("OPENCIR_ADMIN_TOKEN") or None


COMMANDS.register("serve")(Command("serve the search API and web page over an index", _add, _run,
                                   example="opencir serve --index catalogue.idx --port 8000   # then open http://127.0.0.1:8000/"))
