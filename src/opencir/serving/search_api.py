"""``POST /v1/search`` (one query, sessions) and ``POST /v1/search/batch`` (many queries)."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from ..retrieval.query import QueryFailed
from ..retrieval.retriever import SearchResult
from .batcher import Arrival
from .errors import ApiError
from .parsing import api_error, parse_search, read_json, spec_from_json
from .schemas import (
    SEARCH_MULTIPART_SCHEMA,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    Hit,
    QueryBody,
    SearchRequest,
    SearchResponse,
)
from .service import Service, client_key, get_service
from .thumbnails import thumbnail_url

router = APIRouter()
ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 408, 413, 415, 422)}


def search_response(result: SearchResult) -> SearchResponse:
    return SearchResponse(
        session_id=result.session_id or "",
        turn=result.turn,
        reference_id=result.reference_id,
        reference_ids=result.reference_ids,
        text=result.text,
        k=result.k,
        excluded=result.excluded,
        results=[Hit(rank=h.rank, image_id=h.image_id, score=h.score, thumbnail_url=thumbnail_url(h.image_id),
                     metadata=h.metadata) for h in result.hits],
        timings_ms={k: round(v, 3) for k, v in result.timings_ms.items()},
    )


def _search(service: Service, parsed, client: str, arrival: Arrival | None = None) -> SearchResult:
    """One turn: prepare (read images, check texts), then encode and rank through the
    micro-batcher. A new session is stored only once its first search has succeeded."""
    sessions = service.sessions
    session = sessions.get(parsed.session_id) if parsed.session_id else sessions.new()
    options = service.retriever.search_options(parsed.filter, parsed.target_recall)
    prepared = service.retriever.prepare(parsed.spec)
    result = session.search(parsed.spec, k=parsed.k, run=lambda excluded: service.batcher.search(
        prepared, parsed.k, excluded, options, arrival=arrival))
    if parsed.session_id is None:
        sessions.add(session, client)
    return result


@router.post(
    "/v1/search",
    response_model=SearchResponse,
    responses=ERRORS,
    summary="Search with reference(s) (gallery ids or uploaded images) and modification text(s)",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": SearchRequest.model_json_schema()},
        "multipart/form-data": {"schema": SEARCH_MULTIPART_SCHEMA},
    }}},
)
async def search(request: Request) -> SearchResponse:
    service = get_service(request)
    with service.batcher.arriving() as arrival:  # the micro-batcher waits for this query
        parsed = await parse_search(request, service.settings)
        if parsed.session_id is not None:
            try:
                service.sessions.get(parsed.session_id)
            except KeyError as err:
                raise ApiError(404, "unknown_session", str(err.args[0])) from None
        try:
            result = await run_in_threadpool(_search, service, parsed, client_key(request), arrival)
        except (KeyError, ValueError) as err:
            raise api_error(err) from None
    return search_response(result)


def _batch(service: Service, specs: list, ks: list[int], options: list) -> list[SearchResult]:
    return service.retriever.search_many(specs, ks, batch_size=service.settings.micro_batch_size, options=options)


@router.post(
    "/v1/search/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    summary="Many independent queries in one request, encoded together",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": BatchRequest.model_json_schema()}}}},
)
async def search_batch(request: Request) -> BatchResponse:
    service = get_service(request)
    settings = service.settings
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", 'send application/json {"queries": [...], "k": 10}')
    payload = await read_json(request, settings)
    if not isinstance(payload, dict) or not isinstance(payload.get("queries"), list):
        raise ApiError(422, "invalid_request", 'the body is {"queries": [query, ...], "k": n}')
    unknown = sorted(set(payload) - {"queries", "k"})
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown fields {unknown}; a batch has queries and k")
    queries = payload["queries"]
    if not 1 <= len(queries) <= settings.max_batch_queries:
        raise ApiError(422, "invalid_request",
                       f"a batch has 1 to {settings.max_batch_queries} queries, got {len(queries)}")
    default_k = payload.get("k", 10)
    specs, ks, options = [], [], []
    for n, item in enumerate(queries):
        try:
            spec, k, query = spec_from_json(item, settings, QueryBody, f"queries[{n}]", default_k)
            options.append(service.retriever.search_options(query.filter, query.target_recall))
        except ApiError:
            raise
        except (KeyError, ValueError) as err:
            raise api_error(QueryFailed(n, err)) from None
        specs.append(spec)
        ks.append(k)
    start = time.perf_counter()
    try:
        results = await run_in_threadpool(_batch, service, specs, ks, options)
    except (KeyError, ValueError) as err:
        raise api_error(err if isinstance(err, QueryFailed) or len(specs) > 1 else QueryFailed(0, err)) from None
    total = 1000 * (time.perf_counter() - start)
    return BatchResponse(results=[search_response(r) for r in results], timings_ms={"total": round(total, 3)})
