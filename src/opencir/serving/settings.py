"""Limits and resources of one server instance (``ServeSettings``), shown at ``/v1/info``."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..data.images import MAX_IMAGE_PIXELS
from ..retrieval.query import MAX_REFERENCES, MAX_TEXTS


@dataclass(frozen=True)
class ServeSettings:
    """Limits and resources of one app instance (every field but ``device`` is public)."""

    device: str = "cpu"
    max_upload_bytes: int = 10 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    max_image_pixels: int = 40_000_000
    max_text_chars: int = 500
    max_k: int = 100
    max_references: int = MAX_REFERENCES
    max_texts: int = MAX_TEXTS
    max_batch_queries: int = 64
    max_sessions: int = 1000
    max_sessions_per_client: int = 100
    max_session_turns: int = 100
    session_ttl_s: float = 3600.0
    body_timeout_s: float = 30.0
    shutdown_grace_s: float = 10.0
    micro_batch_size: int = 16
    micro_batch_wait_ms: float = 3.0
    threads: int | None = None
    thumbnail_size: int = 256
    max_thumbnail_size: int = 1024
    thumbnail_cache: int = 1024
    max_gallery_page: int = 200

    def __post_init__(self) -> None:
        if self.max_image_pixels > MAX_IMAGE_PIXELS:
            raise ValueError(f"max_image_pixels {self.max_image_pixels} is above the library limit {MAX_IMAGE_PIXELS}")
        for name in ("max_upload_bytes", "max_json_bytes", "max_json_depth", "max_text_chars", "max_k",
                     "max_references", "max_texts", "max_batch_queries", "max_sessions", "max_sessions_per_client",
                     "max_session_turns", "micro_batch_size", "thumbnail_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("body_timeout_s", "shutdown_grace_s", "session_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.micro_batch_wait_ms < 0:
            raise ValueError(f"micro_batch_wait_ms must be >= 0, got {self.micro_batch_wait_ms!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")
        if self.max_references > MAX_REFERENCES or self.max_texts > MAX_TEXTS:
            raise ValueError(f"max_references and max_texts are at most {MAX_REFERENCES} and {MAX_TEXTS}")

    def public(self) -> dict[str, Any]:
        """The limits a client may read (``/v1/info``)."""
        return {k: v for k, v in asdict(self).items() if k != "device"}
