"""Upload guards: request body size and time limits (ASGI middleware) and safe image decoding."""
from __future__ import annotations

import asyncio
import json
import time

from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data import images
from ..data.images import ImageLoadError
from .errors import ApiError


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"request body larger than {limit} bytes")


class BodyTimeout(ApiError):
    def __init__(self, limit: float) -> None:
        super().__init__(408, "body_timeout", f"the request body did not arrive within {limit:g} s; "
                                              "send it at once (the connection is closed)")


class BodyGuard:
    """Rejects bodies over ``max_bytes`` (at once when Content-Length says so, otherwise as
    soon as the counted bytes pass the limit) and bodies still incomplete ``timeout_s``
    seconds after the app started reading them (slow or stalled clients get 408 and the
    connection is closed, instead of holding a worker)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_json(send, 413, BodyTooLarge(self.max_bytes))
            return
        received, complete, deadline = 0, False, None

        async def guarded() -> Message:
            nonlocal received, complete, deadline
            if complete:  # the body is in: waiting for a disconnect is not a slow body
                return await receive()
            if deadline is None:
                deadline = time.monotonic() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                raise BodyTimeout(self.timeout_s) from None  # answered by the app's ApiError handler
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, guarded, send)


async def _send_json(send: Send, status: int, err: ApiError) -> None:
    body = json.dumps({"error": {"code": err.code, "message": err.message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


UPLOAD_ERRORS = {"empty": (400, "empty_image"), "not_an_image": (400, "not_an_image"),
                 "too_large": (413, "image_too_large"), "corrupt": (400, "corrupt_image")}


def decode_image(data: bytes, max_pixels: int, name: str = "upload") -> Image.Image:
    """Decode uploaded bytes to an RGB image; ApiError for empty, non-image, truncated
    or oversized (decompression-bomb) inputs. The checks are ``data.images.decode_image``'s
    (pixel count read from the header before any pixel data is decoded)."""
    try:
        return images.decode_image(data, name, "RGB", max_pixels)
    except ImageLoadError as err:
        status, code = UPLOAD_ERRORS.get(err.reason, (400, "corrupt_image"))
        raise ApiError(status, code, str(err)) from None
