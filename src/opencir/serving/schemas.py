"""Request and response bodies of the HTTP API (they make the OpenAPI schema)."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class SearchRequest(BaseModel):
    """JSON search: a gallery image id, the modification text and the number of results.
    Send ``session_id`` (from an earlier response) to refine: that session's earlier
    results stay excluded."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"ref_id": "shoes/red_01", "text": "make it blue", "k": 10}]})

    ref_id: str = Field(..., min_length=1, max_length=512, description="reference image id in the index")
    text: str = Field(..., description="modification text")
    k: int = Field(10, description="number of results (1..max_k, see /v1/info)")
    session_id: Optional[str] = Field(None, max_length=64, description="continue this multi-turn session")
    filter: Optional[dict[str, Any]] = Field(
        None, description='keep images whose metadata passes: {"color": "red", "price": {"lt": 50}, '
        '"brand": ["a", "b"]} (operators eq, in, gt, gte, lt, lte; fields ANDed)')
    target_recall: Optional[float] = Field(None, gt=0, le=1, description="search effort of a tuned approximate index")


class Hit(BaseModel):
    rank: int
    id: str
    score: float = Field(..., description="cosine similarity of query and image embeddings")
    thumbnail_url: str
    metadata: Optional[dict[str, Any]] = None


class SearchResponse(BaseModel):
    session_id: str = Field(..., description="pass it back to refine from a result")
    turn: int = Field(..., description="1 for a new search, n for the n-th turn of a session")
    reference_id: Optional[str] = Field(None, description="null for an uploaded reference")
    text: str
    k: int
    excluded: int = Field(..., description="ids excluded (reference and earlier turns' results)")
    results: list[Hit]
    timings_ms: dict[str, float]


class ErrorBody(BaseModel):
    code: str = Field(..., examples=["unknown_image"])
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class GalleryItem(BaseModel):
    id: str
    thumbnail_url: str


class GalleryResponse(BaseModel):
    total: int = Field(..., description="images matching the filter")
    offset: int
    limit: int
    items: list[GalleryItem]


class InfoResponse(BaseModel):
    version: str
    model: dict[str, Any]
    index: dict[str, Any]
    limits: dict[str, Any]


class HealthResponse(BaseModel):
    status: str
    images: int


SEARCH_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "reference image (or give ref_id)"},
        "ref_id": {"type": "string", "description": "reference image id (instead of image)"},
        "text": {"type": "string"},
        "k": {"type": "integer", "default": 10},
        "session_id": {"type": "string"},
        "filter": {"type": "string", "description": 'metadata filter as a JSON object, e.g. {"color": "red"}'},
        "target_recall": {"type": "number", "description": "search effort of a tuned approximate index"},
    },
}
