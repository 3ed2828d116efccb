"""Read-only routes: thumbnails, the gallery listing, ``/v1/info`` and ``/healthz``."""
from __future__ import annotations

import os
from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from .. import __version__
from .errors import ApiError
from .schemas import ErrorResponse, GalleryItem, GalleryResponse, HealthResponse, InfoResponse
from .service import get_service
from .thumbnails import thumbnail_url

router = APIRouter()
ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 422)}
PRIVATE_KEYS = {"directory", "cache_dir", "path", "model_dir"}


def redact_paths(value: Any) -> Any:
    """``value`` with server paths removed: keys that hold paths are dropped, and strings
    that look like filesystem paths (absolute, home-relative or naming an existing file)
    become ``local file <name>``."""
    if isinstance(value, dict):
        return {k: redact_paths(v) for k, v in value.items() if k not in PRIVATE_KEYS}
    if isinstance(value, list):
        return [redact_paths(v) for v in value]
    if isinstance(value, str) and _looks_like_path(value):
        return f"local file {PurePath(value).name}"
    return value


def _looks_like_path(text: str) -> bool:
    if text.startswith(("/", "~", "./", "../")) or (len(text) > 2 and text[1] == ":" and text[2] in "\\/"):
        return True
    return ("/" in text or os.sep in text) and os.path.exists(text)


@router.get("/v1/images/{image_id:path}", responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
            response_class=Response, summary="JPEG thumbnail of an indexed image")
def image(request: Request, image_id: str,
          size: int = Query(None, ge=16, description="longest side in pixels")) -> Response:
    service = get_service(request)
    size = size or service.settings.thumbnail_size
    if size > service.settings.max_thumbnail_size:
        raise ApiError(422, "invalid_size", f"size must be at most {service.settings.max_thumbnail_size}")
    try:
        record = service.retriever.store.get(image_id)
    except KeyError:
        raise ApiError(404, "unknown_image", f"image id {image_id!r} is not in the index") from None
    data = service.thumbnails.get(record.image_id, record.path, size)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})


@router.get("/v1/gallery", response_model=GalleryResponse, responses=ERRORS, summary="Indexed ids, paged")
def gallery(request: Request, offset: int = Query(0, ge=0), limit: int = Query(48, ge=1),
            q: str = Query("", max_length=200, description="keep ids containing this text")) -> GalleryResponse:
    service = get_service(request)
    limit = min(limit, service.settings.max_gallery_page)
    ids = service.retriever.store.records.ids
    if q:
        needle = q.lower()
        ids = [i for i in ids if needle in i.lower()]
    items = [GalleryItem(id=i, thumbnail_url=thumbnail_url(i)) for i in ids[offset : offset + limit]]
    return GalleryResponse(total=len(ids), offset=offset, limit=limit, items=items)


@router.get("/v1/info", response_model=InfoResponse, summary="Model, index, limits and serving state")
def info(request: Request) -> InfoResponse:
    service = get_service(request)
    described = redact_paths(service.retriever.info())
    limits = service.settings.public()
    limits["threads"] = request.app.state.threads
    return InfoResponse(version=__version__, model=described["model"], index=described["index"], limits=limits,
                        serving={"micro_batching": service.batcher.stats() | {"enabled": service.batcher.enabled},
                                 "sessions": len(service.sessions)})


@router.get("/healthz", response_model=HealthResponse, summary="Liveness and readiness")
def healthz(request: Request) -> HealthResponse:
    return HealthResponse(status="ok", images=len(get_service(request).retriever.store))
