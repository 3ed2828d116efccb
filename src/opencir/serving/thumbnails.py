"""JPEG thumbnails of indexed images, cached (least recently used dropped first)."""
from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from urllib.parse import quote

from ..data.images import ImageLoadError, load_image
from .errors import ApiError

log = logging.getLogger(__name__)


def thumbnail_url(image_id: str) -> str:
    return f"/v1/images/{quote(image_id, safe='/')}"


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
        image.thumbnail((size, size))  # shrinks only: bounded by the output size
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return data
