"""JSON errors of the HTTP API: ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "body_timeout",
              413: "too_large", 415: "unsupported_media_type", 422: "invalid_request"}
CLOSE_AFTER = {408, 413}
"""Statuses answered before the body was read to its end: the connection is closed."""


class ApiError(Exception):
    """An error answered to the client: HTTP ``status``, a stable ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"connection": "close"} if status in CLOSE_AFTER else None
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _location(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "request"


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app returns, framework ones included, uses the JSON error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{_location(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in err.errors())
        return error_response(422, "invalid_request", message or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, HTTP_CODES.get(err.status_code, "http_error"), str(err.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")
