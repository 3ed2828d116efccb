"""Request and response bodies of the HTTP API (they make the OpenAPI schema)."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class WeightedText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    weight: Optional[float] = Field(None, gt=0, description="relative weight (default 1; negative texts: how "
                                                            "strongly to avoid it, default 0.5)")


class WeightedReference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref_id: str = Field(..., min_length=1, max_length=512)
    weight: Optional[float] = Field(None, gt=0, description="relative weight (default 1)")


class QueryBody(BaseModel):
    """A composed query: one or more gallery references, one or more (weighted) texts and
    optional negative texts ("not striped"); ``ref_id`` and ``text`` are the one-of-each
    shorthand. See docs/serving.md for how a method compiles it."""

    model_config = ConfigDict(extra="forbid")

    ref_id: Optional[str] = Field(None, min_length=1, max_length=512, description="reference image id in the index")
    references: Optional[list[Union[str, WeightedReference]]] = Field(
        None, description="several reference ids (optionally weighted)")
    text: Optional[str] = Field(None, description="modification text")
    texts: Optional[list[Union[str, WeightedText]]] = Field(None, description="several (weighted) modification texts")
    negative_texts: Optional[list[Union[str, WeightedText]]] = Field(
        None, description="texts the results should not match (default weight 0.5)")
    k: int = Field(10, description="number of results (1..max_k, see /v1/info)")
    filter: Optional[dict[str, Any]] = Field(
        None, description='keep images whose metadata passes: {"color": "red", "price": {"lt": 50}, '
        '"brand": ["a", "b"]} (operators eq, in, gt, gte, lt, lte; fields ANDed)')
    target_recall: Optional[float] = Field(None, gt=0, le=1, description="search effort of a tuned approximate index")


class SearchRequest(QueryBody):
    """JSON search: gallery reference(s), the modification text(s) and the number of
    results. Send ``session_id`` (from an earlier response) to refine: that session's
    earlier results stay excluded."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"ref_id": "shoes/red_01", "text": "make it blue", "k": 10},
                     {"references": ["shoes/red_01", {"ref_id": "shoes/red_02", "weight": 0.5}],
                      "texts": [{"text": "make it blue", "weight": 1.0}], "negative_texts": ["striped"], "k": 10}]})

    session_id: Optional[str] = Field(None, max_length=64, description="continue this multi-turn session")


class BatchRequest(BaseModel):
    """Many independent queries in one request (no sessions); ``k`` applies to queries
    that do not set their own."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"queries": [{"ref_id": "shoes/red_01", "text": "make it blue"},
                                  {"ref_id": "shoes/red_02", "text": "with laces", "k": 3}], "k": 5}]})

    queries: list[dict[str, Any]] = Field(..., description="query objects as in /v1/search (without session_id)")
    k: Optional[int] = Field(None, description="default number of results per query")


class Hit(BaseModel):
    rank: int
    id: str
    score: float = Field(..., description="cosine similarity of query and image embeddings")
    thumbnail_url: str
    metadata: Optional[dict[str, Any]] = None


class SearchResponse(BaseModel):
    session_id: str = Field(..., description="pass it back to refine from a result (empty in batch results)")
    turn: int = Field(..., description="1 for a new search, n for the n-th turn of a session")
    reference_id: Optional[str] = Field(None, description="null for an uploaded or several references")
    reference_ids: list[str] = Field(default_factory=list, description="the indexed references of the query")
    text: str
    k: int
    excluded: int = Field(..., description="ids excluded (reference and earlier turns' results)")
    results: list[Hit]
    timings_ms: dict[str, float]


class BatchResponse(BaseModel):
    results: list[SearchResponse]
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
    serving: dict[str, Any] = Field(default_factory=dict, description="micro-batching and session counters")


class HealthResponse(BaseModel):
    status: str
    images: int


SEARCH_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "reference image(s) (repeat the field for several; or give ref_id)"},
        "ref_id": {"type": "array", "items": {"type": "string"}, "description": "reference image id(s)"},
        "text": {"type": "array", "items": {"type": "string"}, "description": "modification text(s)"},
        "negative_text": {"type": "array", "items": {"type": "string"}, "description": "texts to avoid"},
        "k": {"type": "integer", "default": 10},
        "session_id": {"type": "string"},
        "filter": {"type": "string", "description": 'metadata filter as a JSON object, e.g. {"color": "red"}'},
        "target_recall": {"type": "number", "description": "search effort of a tuned approximate index"},
    },
}
