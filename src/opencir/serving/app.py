"""The HTTP service: ``create_app(index_dir, model_dir)`` builds a FastAPI app.

The model and the index are loaded once, in the app's lifespan, into ``app.state.service``
(nothing lives at module level). Routes live in one APIRouter per concern:

* ``search_api``:    ``POST /v1/search`` (JSON or multipart; sessions), ``POST /v1/search/batch``
* ``catalogue_api``: ``GET /v1/images/{id}``, ``GET /v1/gallery``, ``GET /v1/info``, ``GET /healthz``
* ``docs``:          ``GET /docs`` (Swagger UI from local assets)
* ``admin``:         ``POST /v1/index/images``, ``DELETE /v1/index/images/{id}``, ``POST /v1/index/delete``
* here:              ``GET /`` (the web page, ``serving/static``)

Every error is JSON ``{"error": {"code", "message"}}`` with a 4xx status (see errors.py).
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..retrieval.retriever import Retriever, SessionStore
from ..retrieval.store import read_manifest
from . import catalogue_api, search_api
from .admin import AdminSettings, admin_router
from .batcher import MicroBatcher
from .docs import install_docs
from .errors import install_error_handlers
from .parsing import FORM_OVERHEAD_BYTES
from .service import Service
from .settings import ServeSettings
from .threads import configure_threads
from .thumbnails import ThumbnailCache, thumbnail_url
from .uploads import BodyGuard

__all__ = ["ServeSettings", "create_app", "static_dir", "thumbnail_url"]

log = logging.getLogger(__name__)


def static_dir() -> Path:
    """The web page's files, shipped as package data."""
    return Path(str(resources.files("opencir.serving").joinpath("static")))


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
        app.state.threads = configure_threads(settings.threads)
        retriever = await run_in_threadpool(Retriever, index_dir, model_dir, device=settings.device)
        sessions = SessionStore(retriever, settings.max_sessions, settings.session_ttl_s,
                                settings.max_sessions_per_client, settings.max_session_turns)
        batcher = MicroBatcher(retriever, settings.micro_batch_size, settings.micro_batch_wait_ms)
        app.state.service = Service(retriever, sessions, ThumbnailCache(settings.thumbnail_cache), settings, batcher)
        log.info("serving %d images from %s with model %s", len(retriever.store), index_dir, model_dir)
        try:
            yield
        finally:
            app.state.service = None
            batcher.close()
            retriever.close()

    app = FastAPI(
        title="OpenCIR search",
        version=__version__,
        description="Composed image retrieval: reference image(s) plus modification text(s) -> ranked gallery images.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = None
    app.state.threads = {}
    install_error_handlers(app)
    app.add_middleware(BodyGuard, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
                       timeout_s=settings.body_timeout_s)
    app.include_router(search_api.router)
    app.include_router(catalogue_api.router)
    app.include_router(admin_router(index_dir, admin))
    install_docs(app)

    static = static_dir()

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=static), name="static")
    return app
