"""The HTTP service: ``create_app(index_dir, model_dir)`` builds a FastAPI app.

The model and the index are loaded once, in the app's lifespan, into ``app.state.service``
(nothing lives at module level). Endpoints:

* ``POST /v1/search``        JSON ``{ref_id, text, k, session_id?}`` or multipart
                             ``image=@ref.jpg, text, k, session_id?``
* ``GET  /v1/images/{id}``   JPEG thumbnail (``?size=256``)
* ``GET  /v1/gallery``       ids to pick a reference from (``?offset&limit&q``)
* ``GET  /v1/info``          model, index and limits
* ``GET  /healthz``          liveness
* ``GET  /``                 the web page (``serving/static``)

Every error is JSON ``{"error": {"code", "message"}}`` with a 4xx status (see errors.py).
"""
from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from .. import __version__
from ..data.images import MAX_IMAGE_PIXELS, ImageLoadError, load_image
from ..retrieval.retriever import Retriever, SearchResult, SessionStore, check_text
from ..retrieval.store import read_manifest
from .admin import AdminSettings, admin_router
from .errors import ApiError, install_error_handlers
from .schemas import (
    SEARCH_MULTIPART_SCHEMA,
    ErrorResponse,
    GalleryItem,
    GalleryResponse,
    HealthResponse,
    Hit,
    InfoResponse,
    SearchRequest,
    SearchResponse,
)
from .uploads import BodySizeLimit, decode_image

log = logging.getLogger(__name__)

FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small text fields


@dataclass(frozen=True)
class ServeSettings:
    """Limits and resources of one app instance."""

    device: str = "cpu"
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_text_chars: int = 500
    max_k: int = 100
    max_sessions: int = 1000
    session_ttl_s: float = 3600.0
    thumbnail_size: int = 256
    max_thumbnail_size: int = 1024
    thumbnail_cache: int = 1024
    max_gallery_page: int = 200

    def __post_init__(self) -> None:
        if self.max_image_pixels > MAX_IMAGE_PIXELS:
            raise ValueError(f"max_image_pixels {self.max_image_pixels} is above the library limit {MAX_IMAGE_PIXELS}")
        for name in ("max_upload_bytes", "max_text_chars", "max_k", "max_sessions", "thumbnail_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class ThumbnailCache:
    """JPEG thumbnails of indexed images, least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, image_id: str, path: str, size: int) -> bytes:
        key = (image_id, path, size)  # an id deleted and added again with another image is another entry
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            image = load_image(path)
        except ImageLoadError:
            log.warning("thumbnail of %r: cannot read %s", image_id, path)
            raise ApiError(404, "image_unavailable", f"image {image_id!r} cannot be read on the server") from None
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return data


@dataclass
class Service:
    """What the lifespan loads: the retriever, its sessions and the thumbnail cache."""

    retriever: Retriever
    sessions: SessionStore
    thumbnails: ThumbnailCache
    settings: ServeSettings


def thumbnail_url(image_id: str) -> str:
    return f"/v1/images/{quote(image_id, safe='/')}"


def static_dir() -> Path:
    """The web page's files, shipped as package data."""
    return Path(str(resources.files("opencir.serving").joinpath("static")))


def _service(request: Request) -> Service:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, "not_ready", "the model and index are still loading")
    return service


def _response(result: SearchResult) -> SearchResponse:
    return SearchResponse(
        session_id=result.session_id or "",
        turn=result.turn,
        reference_id=result.reference_id,
        text=result.text,
        k=result.k,
        excluded=result.excluded,
        results=[Hit(rank=h.rank, id=h.image_id, score=h.score, thumbnail_url=thumbnail_url(h.image_id),
                     metadata=h.metadata) for h in result.hits],
        timings_ms={k: round(v, 3) for k, v in result.timings_ms.items()},
    )


async def _parse_search(request: Request, settings: ServeSettings) -> tuple[Any, str, int, str | None]:
    """(reference, text, k, session_id) from a JSON or a multipart body, validated."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            payload = await request.json()
        except ValueError:
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
        try:
            query = SearchRequest.model_validate(payload)
        except ValidationError as err:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors())
            raise ApiError(422, "invalid_request", details) from None
        reference, raw_text, raw_k, session_id = query.ref_id, query.text, query.k, query.session_id
    elif content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=FORM_OVERHEAD_BYTES)
        except MultiPartException as err:
            raise ApiError(400, "invalid_form", f"cannot parse the multipart body: {err.message}") from None
        try:  # close the spooled upload files whatever happens
            upload, ref_id = form.get("image"), form.get("ref_id")
            if isinstance(upload, UploadFile) == bool(ref_id):
                raise ApiError(422, "invalid_request", "give exactly one of the fields image (a file) or ref_id")
            if isinstance(upload, UploadFile):
                data = await upload.read()
                reference = await run_in_threadpool(decode_image, data, settings.max_image_pixels,
                                                    upload.filename or "image")
            else:
                reference = str(ref_id)
            raw_text = form.get("text")
            raw_k = form.get("k", "10")
            session_id = str(form.get("session_id") or "") or None
        finally:
            await form.close()
        try:
            raw_k = int(str(raw_k))
        except ValueError:
            raise ApiError(422, "invalid_request", f"k must be an integer, got {raw_k!r}") from None
    else:
        raise ApiError(415, "unsupported_media_type",
                       "send application/json ({ref_id, text, k}) or multipart/form-data (image, text, k)")
    if not isinstance(raw_text, str):
        raise ApiError(422, "invalid_text", "the field text (a string) is required")
    try:
        text = check_text(raw_text, settings.max_text_chars)
    except ValueError as err:
        raise ApiError(422, "invalid_text", str(err)) from None
    if not 1 <= raw_k <= settings.max_k:
        raise ApiError(422, "invalid_k", f"k must be between 1 and {settings.max_k}, got {raw_k}")
    return reference, text, raw_k, session_id


def create_app(index_dir: str | Path, model_dir: str | Path | None = None,
               settings: ServeSettings | None = None, admin: AdminSettings | None = None) -> FastAPI:
    """The search service over ``index_dir``; ``model_dir`` defaults to the model recorded
    in the index. Loading happens in the lifespan (on server start), once. ``admin``:
    who may add and delete images over HTTP (serving/admin.py)."""
    settings = settings or ServeSettings()
    admin = admin or AdminSettings()
    index_dir = Path(index_dir)
    if model_dir is None:
        model_dir = read_manifest(index_dir).get("model", {}).get("directory")
        if not model_dir:
            raise ValueError(f"{index_dir} does not record its model directory; pass model_dir")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        retriever = await run_in_threadpool(Retriever, index_dir, model_dir, device=settings.device)
        app.state.service = Service(retriever, SessionStore(retriever, settings.max_sessions, settings.session_ttl_s),
                                    ThumbnailCache(settings.thumbnail_cache), settings)
        log.info("serving %d images from %s with model %s", len(retriever.store), index_dir, model_dir)
        try:
            yield
        finally:
            app.state.service = None
            retriever.close()

    app = FastAPI(
        title="OpenCIR search",
        version=__version__,
        description="Composed image retrieval: a reference image plus a modification text -> ranked gallery images.",
        lifespan=lifespan,
    )
    app.state.service = None
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD_BYTES)
    app.include_router(admin_router(index_dir, admin))
    errors = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422)}

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        responses=errors,
        summary="Search with a reference (gallery id or uploaded image) and a modification text",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": SearchRequest.model_json_schema()},
            "multipart/form-data": {"schema": SEARCH_MULTIPART_SCHEMA},
        }}},
    )
    async def search(request: Request) -> SearchResponse:
        service = _service(request)
        reference, text, k, session_id = await _parse_search(request, service.settings)
        try:
            session = service.sessions.get(session_id) if session_id else service.sessions.create()
        except KeyError as err:
            raise ApiError(404, "unknown_session", str(err.args[0])) from None
        try:
            result = await run_in_threadpool(session.search, reference, text, k)
        except KeyError:
            raise ApiError(404, "unknown_image", f"image id {reference!r} is not in the index") from None
        except ImageLoadError:
            raise ApiError(404, "image_unavailable", f"image {reference!r} cannot be read on the server") from None
        except ValueError as err:
            raise ApiError(422, "invalid_request", str(err)) from None
        return _response(result)

    @app.get("/v1/images/{image_id:path}", responses={200: {"content": {"image/jpeg": {}}}, **errors},
             response_class=Response, summary="JPEG thumbnail of an indexed image")
    def image(request: Request, image_id: str,
              size: int = Query(None, ge=16, description="longest side in pixels")) -> Response:
        service = _service(request)
        size = size or service.settings.thumbnail_size
        if size > service.settings.max_thumbnail_size:
            raise ApiError(422, "invalid_size", f"size must be at most {service.settings.max_thumbnail_size}")
        try:
            record = service.retriever.store.get(image_id)
        except KeyError:
            raise ApiError(404, "unknown_image", f"image id {image_id!r} is not in the index") from None
        data = service.thumbnails.get(record.image_id, record.path, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/v1/gallery", response_model=GalleryResponse, responses=errors, summary="Indexed ids, paged")
    def gallery(request: Request, offset: int = Query(0, ge=0), limit: int = Query(48, ge=1),
                q: str = Query("", max_length=200, description="keep ids containing this text")) -> GalleryResponse:
        service = _service(request)
        limit = min(limit, service.settings.max_gallery_page)
        ids = service.retriever.store.records.ids
        if q:
            needle = q.lower()
            ids = [i for i in ids if needle in i.lower()]
        items = [GalleryItem(id=i, thumbnail_url=thumbnail_url(i)) for i in ids[offset : offset + limit]]
        return GalleryResponse(total=len(ids), offset=offset, limit=limit, items=items)

    @app.get("/v1/info", response_model=InfoResponse, summary="Model, index and request limits")
    def info(request: Request) -> InfoResponse:
        service = _service(request)
        described = service.retriever.info()
        described["model"].pop("directory", None)  # server paths stay private
        described["index"].pop("directory", None)
        limits = {k: v for k, v in asdict(service.settings).items() if k != "device"}
        return InfoResponse(version=__version__, model=described["model"], index=described["index"], limits=limits)

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness and readiness")
    def healthz(request: Request) -> HealthResponse:
        return HealthResponse(status="ok", images=len(_service(request).retriever.store))

    static = static_dir()

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=static), name="static")
    return app
