"""Adding and deleting gallery images through the HTTP API (an APIRouter included by app.py).

* ``POST   /v1/index/images``       multipart: ``image`` files (repeatable) and one ``id``
                                    field per image, in the same order
* ``DELETE /v1/index/images/{id}``  one image
* ``POST   /v1/index/delete``       JSON ``{"ids": [...]}``

Each request is one commit through the same code as ``opencir index`` (indexing.add_entries
/ delete_images: the writer lock, checksummed files, manifest written last), so it has the
CLI's crash safety, and two writers (requests, or a request and a CLI job) are serialised:
a request waits up to ``lock_timeout_s`` for the writer lock, then answers 409. The live
index (retrieval.live) is refreshed before the response, so the next search sees the change.
Uploaded images are stored content-addressed under ``IDX/uploads/``.

Authentication: with a token configured (``OPENCIR_ADMIN_TOKEN`` or ``--admin-token-file``)
every admin request needs ``Authorization: Bearer <token>``. Without one the endpoints are
open only when the server binds loopback addresses alone, and then refuse browser requests
from other origins (no cross-site writes from a web page); on a public bind they are off.
"""
from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from ..retrieval.catalogue import CatalogueEntry, check_image_id
from ..retrieval.errors import IndexBusyError, IndexDamagedError
from ..retrieval.files import atomic_write_bytes
from ..retrieval.indexing import add_entries, delete_images
from .errors import ApiError
from .schemas import ErrorResponse
from .service import get_service
from .uploads import decode_image

UPLOADS = "uploads"
FORM_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True)
class AdminSettings:
    """Who may change the index over HTTP, and how long a write waits for the lock."""

    token: str | None = None
    loopback_only: bool = True
    lock_timeout_s: float = 10.0
    max_images_per_request: int = 64

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < 16:
            raise ValueError("the admin token must be at least 16 characters long")
        if self.max_images_per_request < 1 or self.lock_timeout_s < 0:
            raise ValueError("max_images_per_request must be >= 1 and lock_timeout_s >= 0")

    @property
    def enabled(self) -> bool:
        return self.token is not None or self.loopback_only

    def describe(self) -> dict[str, Any]:
        """What ``/v1/info`` may say (never the token)."""
        return {"enabled": self.enabled, "token_required": self.token is not None,
                "max_images_per_request": self.max_images_per_request}


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(..., min_length=1, max_length=10_000, description="image ids to remove")


class ChangeResponse(BaseModel):
    added: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    count: int = Field(..., description="images in the index after the change")
    generation: int = Field(..., description="the index generation that holds the change")


def _authorise(request: Request, settings: AdminSettings) -> None:
    if settings.token is not None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
            raise ApiError(401, "unauthorized", "admin requests need the header Authorization: Bearer <admin token>")
        return
    if not settings.loopback_only:
        raise ApiError(403, "admin_disabled", "adding and deleting images is off: this server listens on a "
                       "non-loopback address without an admin token; restart it with OPENCIR_ADMIN_TOKEN set "
                       "(or --admin-token-file)")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise ApiError(403, "cross_origin", f"admin requests from the web origin {origin} are refused")


def _write_errors(err: Exception) -> ApiError:
    if isinstance(err, IndexBusyError):
        return ApiError(409, "index_busy", str(err))
    if isinstance(err, IndexDamagedError):
        return ApiError(500, "index_damaged", str(err))
    if isinstance(err, KeyError):
        return ApiError(404, "unknown_image", str(err.args[0]))
    if isinstance(err, OSError):  # e.g. a full disk: the commit did not happen, the old generation serves on
        return ApiError(503, "write_failed", f"the index was not changed: {err}")
    return ApiError(422, "invalid_request", str(err))


def _store_upload(uploads: Path, data: bytes, image_format: str | None) -> Path:
    """Keep an uploaded file content-addressed (``uploads/ab/abcdef....png``), atomically."""
    digest = hashlib.sha256(data).hexdigest()
    suffix = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
    path = uploads / digest[:2] / f"{digest}{suffix.get(image_format or '', '.img')}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    return path


def admin_router(index_dir: Path, settings: AdminSettings) -> APIRouter:
    """The add/delete endpoints over ``index_dir``."""
    router = APIRouter(prefix="/v1/index", tags=["index"])
    writing = threading.Lock()  # requests of this server queue here; other processes at the file lock
    uploads = index_dir / UPLOADS
    errors = {status: {"model": ErrorResponse} for status in (401, 403, 404, 409, 413, 415, 422)}

    def commit(service: Any, change: Any) -> ChangeResponse:
        with writing:
            try:
                result = change()
            except (IndexBusyError, IndexDamagedError, KeyError, ValueError, OSError) as err:
                raise _write_errors(err) from None
            store = service.retriever.live.refresh()
            return ChangeResponse(count=len(store), generation=int(store.manifest["generation"]), **result)

    @router.post("/images", response_model=ChangeResponse, responses=errors,
                 summary="Add images to the index (multipart: image files and one id each)")
    async def add(request: Request) -> ChangeResponse:
        _authorise(request, settings)
        service = get_service(request)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type", "send multipart/form-data with image files and image_id fields")
        limit = settings.max_images_per_request
        try:
            form = await request.form(max_files=limit, max_fields=limit + 4, max_part_size=FORM_FIELD_BYTES)
        except MultiPartException as err:
            raise ApiError(400, "invalid_form", f"cannot parse the multipart body: {err.message}") from None
        try:
            files = [f for f in form.getlist("image") if isinstance(f, UploadFile)]
            # one image_id field per image file ("id" is read too, as in manifests)
            ids = [str(i) for i in form.getlist("image_id") or form.getlist("id")]
            if not files or len(files) != len(ids):
                raise ApiError(422, "invalid_request", f"give one image_id field per image file ({len(files)} "
                               f"images, {len(ids)} ids)")
            try:
                ids = [check_image_id(i, "image_id") for i in ids]
            except ValueError as err:
                raise ApiError(422, "invalid_id", str(err)) from None
            if len(set(ids)) != len(ids):
                raise ApiError(422, "invalid_id", "an id is given twice")
            payloads = [(await upload.read(), upload.filename or image_id) for upload, image_id in zip(files, ids)]
        finally:
            await form.close()
        max_pixels = service.settings.max_image_pixels

        def keep_uploads() -> list[CatalogueEntry]:
            entries = []
            for (data, name), image_id in zip(payloads, ids):
                decode_image(data, max_pixels, name)  # refuses a bad upload before anything is written
                entries.append(CatalogueEntry(image_id, _store_upload(uploads, data, _format_of(data))))
            return entries

        entries = await run_in_threadpool(keep_uploads)

        def write() -> dict[str, Any]:
            add_entries(index_dir, service.retriever.method, entries, settings.lock_timeout_s,
                        service.retriever.device)
            return {"added": ids}

        return await run_in_threadpool(commit, service, write)

    async def remove(request: Request, ids: list[str]) -> ChangeResponse:
        _authorise(request, settings)
        service = get_service(request)

        def write() -> dict[str, Any]:
            before = service.retriever.store
            paths = {before.get(i).path for i in ids if i in before}
            delete_images(index_dir, ids, settings.lock_timeout_s)
            _drop_unused_uploads(uploads, paths, service.retriever.live.refresh())
            return {"deleted": list(dict.fromkeys(ids))}

        return await run_in_threadpool(commit, service, write)

    @router.delete("/images/{image_id:path}", response_model=ChangeResponse, responses=errors,
                   summary="Delete one image from the index")
    async def delete_one(request: Request, image_id: str) -> ChangeResponse:
        return await remove(request, [image_id])

    @router.post("/delete", response_model=ChangeResponse, responses=errors, summary="Delete images from the index")
    async def delete_many(request: Request) -> ChangeResponse:
        try:
            body = DeleteRequest.model_validate(await request.json())
        except ValueError as err:
            message = "; ".join(e["msg"] for e in err.errors()) if isinstance(err, ValidationError) else "invalid JSON"
            raise ApiError(422, "invalid_request", message) from None
        return await remove(request, body.ids)

    return router


def _format_of(data: bytes) -> str | None:
    from io import BytesIO

    from PIL import Image

    try:
        with Image.open(BytesIO(data)) as image:
            return image.format
    except Exception:  # noqa: BLE001 - decode_image has already accepted it
        return None


def _drop_unused_uploads(uploads: Path, paths: set[str], store: Any) -> None:
    """Remove uploaded files of deleted images that no live record uses (after the commit)."""
    live = set(store.records.paths)
    root = uploads.resolve()
    for name in paths - live:
        path = Path(name)
        if path.resolve().is_relative_to(root):
            path.unlink(missing_ok=True)
