"""Request bodies to query specs, rejecting hostile input before any work is done.

* JSON: read with a byte cap, parsed once; nesting deeper than ``max_json_depth`` (a
  100,000-deep array once hit Python's recursion limit and gave a 500) and strings that
  are not valid Unicode (lone UTF-16 surrogates such as ``"\\ud800"``, which cannot be
  written back as UTF-8) are 400 ``invalid_json``, before validation.
* multipart: text fields must be valid UTF-8 (or the declared charset); starlette would
  silently decode them as Latin-1.
* the fields become a :class:`~opencir.retrieval.query.QuerySpec`; gallery references
  only: JSON never names a server file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from ..data.images import ImageLoadError
from ..retrieval.query import (
    InvalidText,
    QueryFailed,
    QuerySpec,
    TextTooLong,
    UnknownReference,
    UnreadableReference,
    Weighted,
    check_text,
    spec_from_dict,
)
from .errors import ApiError
from .schemas import QueryBody, SearchRequest
from .settings import ServeSettings
from .uploads import BodyTooLarge, decode_image

FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small text fields


def incomplete_body() -> ApiError:
    return ApiError(400, "incomplete_body", "the client closed the connection before the body was complete")


@dataclass
class ParsedSearch:
    spec: QuerySpec
    k: int
    session_id: str | None
    filter: dict[str, Any] | None = None
    target_recall: float | None = None


def form_search_options(form: FormData) -> tuple[dict[str, Any] | None, float | None]:
    """``filter`` (a JSON object as text) and ``target_recall`` of a multipart search."""
    raw_filter, raw_target = form.get("filter"), form.get("target_recall")
    where = None
    if raw_filter:
        try:
            where = json.loads(str(raw_filter))
        except json.JSONDecodeError:
            where = None
        if not isinstance(where, dict):
            raise ApiError(422, "invalid_request", 'filter must be a JSON object such as {"color": "red"}')
    target = None
    if raw_target:
        try:
            target = float(str(raw_target))
        except ValueError:
            raise ApiError(422, "invalid_request", f"target_recall must be a number, got {raw_target!r}") from None
    return where, target


# ------------------------------------------------------------------- JSON
async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise incomplete_body() from None
    return b"".join(chunks)


def check_json(payload: Any, max_depth: int) -> None:
    """400 for nesting deeper than ``max_depth`` or a string (key or value) that is not
    valid Unicode; iterative, so hostile input cannot exhaust the stack."""
    stack: list[tuple[Any, int, str]] = [(payload, 1, "$")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > max_depth:
                raise ApiError(400, "invalid_json", f"the JSON nests deeper than {max_depth} levels (at {where})")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_string(key, f"{where} (a key)")
                stack.append((item, depth + 1, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]"))
        elif isinstance(value, str):
            _check_string(value, where)


def _check_string(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ApiError(400, "invalid_json", f"the string at {where} is not valid Unicode: a lone surrogate "
                                            f"{value[err.start]!r} (send UTF-8 text)") from None


async def read_json(request: Request, settings: ServeSettings) -> Any:
    """The parsed, checked JSON body (see the module docstring)."""
    body = await read_body(request, settings.max_json_bytes)
    try:
        payload = json.loads(body)
    except RecursionError:
        raise ApiError(400, "invalid_json", f"the JSON nests deeper than {settings.max_json_depth} levels") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, "invalid_json", "the body is not valid JSON (UTF-8)") from None
    check_json(payload, settings.max_json_depth)
    return payload


def _validation_message(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors())


def _no_server_files(name: str) -> Any:
    raise ValueError("JSON queries name gallery ids only; upload an image with multipart/form-data")


def spec_from_json(payload: Any, settings: ServeSettings, model: type[QueryBody] = SearchRequest,
                   where: str = "body", default_k: int = 10) -> tuple[QuerySpec, int, QueryBody]:
    """(spec, k, validated model) of one JSON query object."""
    try:
        query = model.model_validate(payload)
    except ValidationError as err:
        raise ApiError(422, "invalid_request", f"{where}: {_validation_message(err)}") from None
    fields = query.model_dump(exclude_none=True, include={"ref_id", "references", "text", "texts", "negative_texts"})
    spec = spec_from_dict(fields, _no_server_files, where)
    k = query.k if "k" in query.model_fields_set else default_k
    check_limits(spec, k, settings)
    return spec, k, query


def check_limits(spec: QuerySpec, k: int, settings: ServeSettings) -> None:
    """The server's limits on a query: k, text lengths, number of references and texts."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= settings.max_k:
        raise ApiError(422, "invalid_k", f"k must be between 1 and {settings.max_k}, got {k}")
    if len(spec.references) > settings.max_references or len(spec.texts) > settings.max_texts \
            or len(spec.negative_texts) > settings.max_texts:
        raise ApiError(422, "invalid_request", f"a query has at most {settings.max_references} references and "
                                               f"{settings.max_texts} texts and negative texts")
    for item in (*spec.texts, *spec.negative_texts):
        try:
            check_text(item.value, settings.max_text_chars)
        except InvalidText as err:
            raise ApiError(422, "invalid_text", str(err)) from None


# -------------------------------------------------------------- multipart
class StrictMultiPartParser(MultiPartParser):
    """starlette's multipart parser, except that a text field that is not valid in the
    body's charset (UTF-8 unless declared) is an error instead of Latin-1."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode(self._charset or "utf-8")
            except (UnicodeDecodeError, LookupError):
                raise MultiPartException(f"the field {part.field_name!r} is not valid "
                                         f"{self._charset or 'utf-8'} text") from None
        super().on_part_end()


async def read_form(request: Request, settings: ServeSettings) -> FormData:
    """The multipart form (at most ``max_references`` files), strictly decoded."""
    parser = StrictMultiPartParser(request.headers, request.stream(), max_files=settings.max_references,
                                   max_fields=6 + 2 * settings.max_texts + settings.max_references,
                                   max_part_size=FORM_OVERHEAD_BYTES)
    try:
        return await parser.parse()
    except ClientDisconnect:
        raise incomplete_body() from None
    except MultiPartException as err:
        raise ApiError(400, "invalid_form", f"cannot parse the multipart body: {err.message}") from None


async def spec_from_form(form: FormData, settings: ServeSettings) -> tuple[QuerySpec, int, str | None]:
    """(spec, k, session_id) of a multipart search: repeatable ``image`` / ``ref_id`` /
    ``text`` / ``negative_text`` fields, ``k`` and ``session_id``."""
    unknown = sorted({key for key, _ in form.multi_items()}
                     - {"image", "ref_id", "text", "negative_text", "k", "session_id", "filter", "target_recall"})
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown fields {unknown}")
    references: list[Weighted] = []
    for key, value in form.multi_items():
        if key == "image":
            if not isinstance(value, UploadFile):
                raise ApiError(422, "invalid_request", "the field image must be a file")
            data = await value.read()
            image = await run_in_threadpool(decode_image, data, settings.max_image_pixels, value.filename or "image")
            references.append(Weighted(image))
        elif key == "ref_id":
            if isinstance(value, UploadFile) or not value:
                raise ApiError(422, "invalid_request", "the field ref_id must be a non-empty image id")
            references.append(Weighted(str(value)))
    if not references:
        raise ApiError(422, "invalid_request", "give at least one of the fields image (a file) or ref_id")
    texts = [v for v in form.getlist("text") if isinstance(v, str)]
    negatives = [v for v in form.getlist("negative_text") if isinstance(v, str)]
    if not texts:
        raise ApiError(422, "invalid_text", "the field text (a string) is required")
    raw_k = form.get("k", "10")
    try:
        k = int(str(raw_k))
    except ValueError:
        raise ApiError(422, "invalid_request", f"k must be an integer, got {raw_k!r}") from None
    try:
        spec = QuerySpec(tuple(references), tuple(Weighted(check_text(t)) for t in texts),
                         tuple(Weighted(check_text(t), 0.5) for t in negatives))
    except InvalidText as err:
        raise ApiError(422, "invalid_text", str(err)) from None
    except ValueError as err:
        raise ApiError(422, "invalid_request", str(err)) from None
    check_limits(spec, k, settings)
    session_id = form.get("session_id")
    return spec, k, (str(session_id) if session_id else None)


# ------------------------------------------------------------------ search
async def parse_search(request: Request, settings: ServeSettings) -> ParsedSearch:
    """The query of a ``/v1/search`` request, JSON or multipart, fully validated."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        payload = await read_json(request, settings)
        try:
            spec, k, query = spec_from_json(payload, settings)
        except InvalidText as err:
            raise ApiError(422, "invalid_text", str(err)) from None
        except ValueError as err:
            raise ApiError(422, "invalid_request", str(err)) from None
        return ParsedSearch(spec, k, query.session_id, query.filter, query.target_recall)  # type: ignore[attr-defined]
    if content_type == "multipart/form-data":
        form = await read_form(request, settings)
        try:  # close the spooled upload files whatever happens
            spec, k, session_id = await spec_from_form(form, settings)
            where, target = form_search_options(form)
        finally:
            await form.close()
        if session_id is not None and len(session_id) > 64:
            raise ApiError(422, "invalid_request", "session_id is at most 64 characters")
        return ParsedSearch(spec, k, session_id, where, target)
    raise ApiError(415, "unsupported_media_type",
                   "send application/json ({ref_id, text, k}) or multipart/form-data (image, text, k)")


def api_error(err: Exception) -> ApiError:
    """The HTTP answer to an error of the query side (unknown ids, unreadable images,
    over-long texts, impossible queries)."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, QueryFailed):
        inner = api_error(err.error)
        return ApiError(inner.status, inner.code, f"queries[{err.position}]: {inner.message}")
    if isinstance(err, UnknownReference):
        return ApiError(404, "unknown_image", f"image id {err.image_id!r} is not in the index")
    if isinstance(err, UnreadableReference):
        return ApiError(404, "image_unavailable", f"image {err.image_id!r} cannot be read on the server")
    if isinstance(err, ImageLoadError):
        return ApiError(400, "corrupt_image", "the reference image cannot be read")
    if isinstance(err, KeyError):
        return ApiError(404, "not_found", str(err.args[0]) if err.args else "not found")
    if isinstance(err, TextTooLong):
        return ApiError(422, "text_too_long", str(err))
    if isinstance(err, InvalidText):
        return ApiError(422, "invalid_text", str(err))
    if isinstance(err, ValueError):
        return ApiError(422, "invalid_request", str(err))
    raise err
