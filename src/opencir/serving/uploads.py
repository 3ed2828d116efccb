"""Upload guards: a request body size limit (ASGI middleware) and safe image decoding."""
from __future__ import annotations

import io
import json

from PIL import Image, UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def decode_image(data: bytes, max_pixels: int, name: str = "upload") -> Image.Image:
    """Decode uploaded bytes to an RGB image; ApiError for empty, non-image, truncated
    or oversized (decompression-bomb) inputs. The pixel count is checked from the
    header before any pixel data is decoded (the same guard as ``data.images.load_image``)."""
    if not data:
        raise ApiError(400, "empty_image", f"{name}: the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise ApiError(413, "image_too_large",
                               f"{name}: {image.width}x{image.height} pixels is over the limit of {max_pixels} pixels")
            image.load()
            return image.convert("RGB")
    except ApiError:
        raise
    except UnidentifiedImageError:
        raise ApiError(400, "not_an_image", f"{name}: not an image file (JPEG, PNG, WebP, GIF, BMP or TIFF)") from None
    except Image.DecompressionBombError as err:
        raise ApiError(413, "image_too_large", f"{name}: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ApiError(400, "corrupt_image", f"{name}: cannot decode the image ({err})") from None
