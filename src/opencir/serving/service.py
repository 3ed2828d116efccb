"""What the lifespan loads (``Service``) and how a route reaches it."""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ..retrieval.retriever import Retriever, SessionStore
from .batcher import MicroBatcher
from .errors import ApiError
from .settings import ServeSettings
from .thumbnails import ThumbnailCache


@dataclass
class Service:
    """The retriever, its sessions, the micro-batcher and the thumbnail cache of one app."""

    retriever: Retriever
    sessions: SessionStore
    thumbnails: ThumbnailCache
    settings: ServeSettings
    batcher: MicroBatcher


def get_service(request: Request) -> Service:
    """The app's loaded service; 503 while the lifespan is still loading."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, "not_ready", "the model and index are still loading")
    return service


def client_key(request: Request) -> str:
    """Who a request comes from, for per-client session bounds: the remote address
    (behind a proxy, run uvicorn with ``--forwarded-allow-ips`` so it is the real client)."""
    return request.client.host if request.client else ""
