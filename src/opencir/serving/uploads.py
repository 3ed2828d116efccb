"""Upload guards: a request body size limit (ASGI middleware) and safe image decoding."""
from __future__ import annotations

import json

from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data import images
from ..data.images import ImageLoadError
from .errors import ApiError


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"request body larger than {limit} bytes")


class BodySizeLimit:
    """Rejects bodies over ``max_bytes``: at once when Content-Length says so, otherwise
    (chunked uploads) as soon as the counted bytes pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_json(send, 413, BodyTooLarge(self.max_bytes))
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)  # answered by the app's ApiError handler
            return message

        await self.app(scope, limited, send)


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
