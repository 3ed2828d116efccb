"""Composed-image search over an index: ``Retriever`` and multi-turn ``SearchSession``.

>>> retriever = Retriever("idx", "runs/clip4cir/best")
>>> result = retriever.search("shoes/red_01", "make it blue", k=10)   # a gallery id
>>> result = retriever.search(Path("ref.jpg"), "make it blue")         # an image file
>>> spec = QuerySpec((Weighted("shoes/red_01"), Weighted("shoes/red_02", 0.5)),
...                  (Weighted("make it blue"),), (Weighted("striped", 0.5),))
>>> result = retriever.search(spec)                                    # a composed query spec
>>> results = retriever.search_many([("shoes/red_01", "blue"), spec])  # one encoder call
>>> session = retriever.session()
>>> first = session.search("shoes/red_01", "make it blue")
>>> second = session.refine(first.hits[2].image_id, "with laces")      # earlier hits stay excluded

A reference given as ``str`` is an image id of the index; a ``pathlib.Path`` or a
``PIL.Image.Image`` is an image. Indexed references are excluded from results by
default (``exclude_reference``). Texts longer than the text encoder reads are refused
(``TextTooLong``), never cut silently. The query side runs in three steps that callers
may split across threads (the server's micro-batcher does): :meth:`Retriever.prepare`
(read and preprocess images, check texts), :meth:`Retriever.encode` (one encoder call
for many prepared queries) and :meth:`Retriever.rank` (one index search).
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..data.images import ImageLoadError, load_image, normalise_image
from ..methods.hub import load_model, model_reference  # a directory or an hf-hub: name
from .live import LiveIndex
from .query import (
    NEGATIVE_TEXT_SPACES,
    QueryFailed,
    QuerySpec,
    Reference,
    TextTooLong,
    UnknownReference,
    UnreadableReference,
    check_text,
    check_text_length,
    combine,
    negative_text_embedding,
)
from .filters import Filter, FilterSpec, parse_filter
from .store import IndexStore, Record, model_fingerprint
from .tuning import params_for_recall

if TYPE_CHECKING:
    from ..methods.base import CIRMethod, Features

__all__ = ["Hit", "PreparedQuery", "QueryFailed", "QuerySpec", "Retriever", "SearchOptions", "SearchResult", "SearchSession",
           "SessionStore",
           "TextTooLong", "check_text"]

MASK_KEY = "mask_path"
Query = Union[QuerySpec, tuple[Reference, str]]


@dataclass(frozen=True)
class Hit:
    """One ranked result."""

    rank: int
    image_id: str
    score: float
    path: str
    metadata: dict[str, Any] | None = None


@dataclass
class SearchResult:
    """Ranked hits of one query (``reference_id`` is None for an uploaded image)."""

    hits: list[Hit]
    text: str
    k: int
    reference_id: str | None = None
    session_id: str | None = None
    turn: int = 0
    excluded: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    reference_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_id": self.reference_id,
            "reference_ids": self.reference_ids,
            "text": self.text,
            "k": self.k,
            "session_id": self.session_id,
            "turn": self.turn,
            "excluded": self.excluded,
            "timings_ms": self.timings_ms,
            "results": [hit.__dict__ for hit in self.hits],
        }


@dataclass
class PreparedQuery:
    """A query ready for the encoder: its spec and preprocessed pixels (R', 3, S, S) of the
    references that need the image encoder; ``stored[i]`` holds reference i's features
    read from the index instead (None: it is among the pixels, in order)."""

    spec: QuerySpec
    pixels: torch.Tensor | None
    masks: torch.Tensor | None
    prepare_ms: float = 0.0
    stored: list["Features | None"] | None = None

    @property
    def reference_ids(self) -> list[str]:
        return self.spec.reference_ids


def as_spec(query: Query | Reference, text: str | None = None) -> QuerySpec:
    """A QuerySpec from a spec, a (reference, text) pair, or a reference and ``text``."""
    if isinstance(query, QuerySpec):
        if text is not None:
            raise ValueError("give the texts inside the QuerySpec, not as a second argument")
        return query
    if isinstance(query, tuple):
        if text is not None or len(query) != 2:
            raise ValueError("a query pair is (reference, text)")
        query, text = query
    return QuerySpec.simple(query, text)  # a missing text fails in check_text


def _gather(features: "Features", rows: torch.Tensor) -> "Features":
    """The rows ``rows`` of every per-sample tensor of ``features``."""
    return {key: value.index_select(0, rows.to(value.device)) for key, value in features.items()}


@dataclass(frozen=True)
class SearchOptions:
    """How one query is ranked: a metadata filter and backend search parameters."""

    where: Filter | None = None
    params: dict[str, Any] | None = None

    def key(self) -> str:
        """Queries with equal keys are searched together."""
        return f"{self.where.canonical() if self.where else ''}|{sorted((self.params or {}).items())}"


class Retriever:
    """Loads an index and the model that built it; composes queries and searches.

    Give ``model_dir`` (a saved model directory or an ``hf-hub:ORG/NAME`` model) or an
    already built ``method``. A model
    whose fingerprint differs from the index's is refused (FingerprintMismatch).

    The index is live: every access to ``store`` returns the newest committed generation
    (see ``retrieval.live``), so a long-running retriever sees what ``opencir index`` adds
    and deletes without a restart. Gallery-id references use the reference features stored
    at indexing when the index has them (``use_stored_features``), skipping the encoder.
    """

    def __init__(self, index_dir: str | Path, model_dir: str | Path | None = None, *,
                 method: "CIRMethod | None" = None, device: str | torch.device = "cpu",
                 use_stored_features: bool = True) -> None:
        from ..encoding.features import method_transform

        if (model_dir is None) == (method is None):
            raise ValueError("give exactly one of model_dir or method")
        self.device = torch.device(device)
        self.method = load_model(model_dir, device=self.device) if model_dir is not None else method.to(self.device).eval()
        self.model_dir = model_reference(model_dir) if model_dir is not None else None
        self.fingerprint = model_fingerprint(self.method)
        self.use_stored_features = use_stored_features
        model_name = f"model {model_dir or self.method.name!r}"
        self.live = LiveIndex(index_dir, check=lambda store: store.check_fingerprint(self.fingerprint, model_name))
        self.transform_name, self.transform = method_transform(self.method)

    @property
    def store(self) -> IndexStore:
        """The newest committed generation of the index."""
        return self.live.current()

    def close(self) -> None:
        self.live.close()

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- queries
    def _stored(self, reference: Reference) -> "Features | None":
        """The image features of a gallery id stored at indexing (None: encode its pixels)."""
        if not self.use_stored_features or not isinstance(reference, str):
            return None
        try:
            stored = self.store.reference_features(reference, self.fingerprint)
        except KeyError as err:
            raise UnknownReference(reference, str(err.args[0])) from None
        return {name: torch.from_numpy(value) for name, value in stored.items()} if stored is not None else None

    def _pixels(self, reference: Reference) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Preprocessed (3, S, S) pixels of one reference and its mask (for mask methods)."""
        needs_masks = self.method.requirements.needs_masks
        mask = None
        if isinstance(reference, str):
            try:
                record = self.store.get(reference)
            except KeyError as err:
                raise UnknownReference(reference, str(err.args[0])) from None
            try:
                image = load_image(record.path)
            except ImageLoadError as err:
                raise UnreadableReference(reference, err) from None
            if needs_masks:
                mask_path = (record.metadata or {}).get(MASK_KEY)
                if not mask_path:
                    raise ValueError(f"method {self.method.name!r} needs a mask for {reference!r}; index a manifest.csv with a mask_path column")
                mask = load_image(mask_path)
        else:
            if needs_masks:
                raise ValueError(f"method {self.method.name!r} needs a segmentation mask of the reference: search by the id of an indexed image")
            image = load_image(reference) if isinstance(reference, Path) else normalise_image(reference)
        return self.transform(image), (self.transform(mask) if mask is not None else None)

    def check_texts(self, spec: QuerySpec) -> None:
        """ValueError/TextTooLong before any encoding: over-long texts, unsupported negatives."""
        for item in (*spec.texts, *spec.negative_texts):
            check_text_length(self.method, item.value)
        if spec.negative_texts and self.method.name not in NEGATIVE_TEXT_SPACES:
            negative_text_embedding(self.method, [])  # raises the explanatory error

    def check(self, spec: QuerySpec) -> QuerySpec:
        """``spec`` when its texts fit and its gallery references exist (cheap: no image read)."""
        self.check_texts(spec)
        for image_id in spec.reference_ids:
            if image_id not in self.store:
                try:
                    self.store.get(image_id)
                except KeyError as err:
                    raise UnknownReference(image_id, str(err.args[0])) from None
        return spec

    def prepare(self, query: Query | Reference, text: str | None = None) -> PreparedQuery:
        """Check the texts and read and preprocess the reference images of one query
        (KeyError for an unknown id, ImageLoadError for an unreadable image)."""
        start = time.perf_counter()
        spec = as_spec(query, text)
        self.check_texts(spec)
        stored = [self._stored(r.value) for r in spec.references]
        encode = [self._pixels(r.value) for r, f in zip(spec.references, stored) if f is None]
        pixels = torch.stack([p for p, _ in encode]) if encode else None
        masks = torch.stack([m for _, m in encode]) if encode and encode[0][1] is not None else None
        if len(encode) == len(stored):
            stored = None
        return PreparedQuery(spec, pixels, masks, 1000 * (time.perf_counter() - start), stored)

    @torch.no_grad()
    def encode(self, prepared: Sequence[PreparedQuery]) -> np.ndarray:
        """(B, D) float32 query vectors of prepared queries, with one image-encoder call,
        one text-encoder call and one compose call for all of them."""
        if not prepared:
            return np.zeros((0, self.store.dim), dtype=np.float32)
        method = self.method
        reference_features = self._reference_features(prepared)
        texts = list(dict.fromkeys(t.value for p in prepared for t in p.spec.texts))
        text_row = {t: i for i, t in enumerate(texts)}
        text_features = method.encode_texts(texts)
        ref_rows, txt_rows, first = [], [], 0
        for p in prepared:
            for i in range(len(p.spec.references)):
                for t in p.spec.texts:
                    ref_rows.append(first + i)
                    txt_rows.append(text_row[t.value])
            first += len(p.spec.references)
        pairs = method.compose(_gather(reference_features, torch.tensor(ref_rows)),
                               _gather(text_features, torch.tensor(txt_rows))).float()
        negatives = list(dict.fromkeys(n.value for p in prepared for n in p.spec.negative_texts))
        negative_rows = {t: i for i, t in enumerate(negatives)}
        negative_vectors = negative_text_embedding(method, negatives) if negatives else None
        queries, offset = [], 0
        for p in prepared:
            count = len(p.spec.references) * len(p.spec.texts)
            own = None
            if p.spec.negative_texts and negative_vectors is not None:
                own = negative_vectors[torch.tensor([negative_rows[n.value] for n in p.spec.negative_texts])]
            queries.append(combine(p.spec, pairs[offset : offset + count], own))
            offset += count
        return torch.stack(queries).float().cpu().numpy()

    def _reference_features(self, prepared: Sequence[PreparedQuery]) -> "Features":
        """Image features of every reference of ``prepared``, in order: one image-encoder
        call for those that need it, stored rows for the others."""
        needing = [p for p in prepared if p.pixels is not None]
        encoded: "Features" = {}
        if needing:
            pixels = torch.cat([p.pixels for p in needing]).to(self.device)
            with_masks = [p.masks for p in needing if p.masks is not None]
            masks = torch.cat(with_masks).to(self.device) if with_masks else None
            encoded = self.method.encode_images(pixels, masks)
            if all(p.stored is None for p in prepared):
                return encoded
        names = list(encoded) or list(next(f for p in prepared for f in p.stored or () if f is not None))
        rows: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        next_row = 0
        for p in prepared:
            for i in range(len(p.spec.references)):
                stored = p.stored[i] if p.stored is not None else None
                for name in names:
                    if stored is not None:
                        value = stored[name].to(self.device)
                        rows[name].append(value.to(encoded[name].dtype) if name in encoded else value)
                    else:
                        rows[name].append(encoded[name][next_row : next_row + 1])
                if stored is None:
                    next_row += 1
        return {name: torch.cat(parts) for name, parts in rows.items()}

    def encode_query(self, reference: Query | Reference, text: str | None = None) -> tuple[np.ndarray, str | None]:
        """The (D,) float32 query embedding and the (first) indexed reference id."""
        prepared = self.prepare(reference, text)
        ids = prepared.reference_ids
        return self.encode([prepared])[0], (ids[0] if ids else None)

    def search_options(self, filter: FilterSpec = None, target_recall: float | None = None) -> "SearchOptions":
        """Checked ranking options of one query (ValueError for a bad filter or target, or a
        target on an index that was never tuned): before anything is encoded."""
        params = params_for_recall(self.store.manifest, target_recall) if target_recall is not None else None
        return SearchOptions(parse_filter(filter), params)

    def rank(self, prepared: Sequence[PreparedQuery], vectors: np.ndarray, k: int | Sequence[int],
             exclude_reference: bool = True, exclude: Sequence[Iterable[str]] | None = None,
             encode_ms: float = 0.0, options: Sequence["SearchOptions | None"] | None = None) -> list[SearchResult]:
        """Search the index once for all ``vectors`` (one per prepared query; once per group
        of queries sharing a filter and search parameters); ``k``, ``exclude`` and
        ``options`` (``search_options``) may differ per query."""
        ks = [k] * len(prepared) if isinstance(k, int) else list(k)
        for value in ks:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"k must be a positive integer, got {value!r}")
        banned = []
        for n, p in enumerate(prepared):
            ids = set(exclude[n]) if exclude is not None else set()
            if exclude_reference:
                ids.update(p.reference_ids)
            banned.append(ids)
        start = time.perf_counter()
        ranked = self._search_grouped(vectors, ks, banned, options) if prepared else []
        search_ms = 1000 * (time.perf_counter() - start)
        results = []
        for p, rows, value, ids in zip(prepared, ranked, ks, banned):
            hits = [_hit(rank, record, score) for rank, (record, score) in enumerate(rows[:value], start=1)]
            reference_ids = p.reference_ids
            results.append(SearchResult(
                hits, p.spec.texts[0].value if p.spec.is_simple else p.spec.describe(), value,
                reference_ids[0] if len(p.spec.references) == 1 and reference_ids else None,
                excluded=len(ids), reference_ids=reference_ids,
                timings_ms={"prepare": p.prepare_ms, "encode": encode_ms, "search": search_ms}))
        return results

    def _search_grouped(self, vectors: np.ndarray, ks: Sequence[int], banned: Sequence[set[str]],
                        options: Sequence["SearchOptions | None"] | None) -> list[list[tuple[Record, float]]]:
        """``store.search`` once per group of rows with the same filter and parameters."""
        groups: dict[str, list[int]] = {}
        for row in range(len(vectors)):
            option = options[row] if options is not None else None
            groups.setdefault(option.key() if option is not None else "", []).append(row)
        ranked: list[list[tuple[Record, float]]] = [[] for _ in range(len(vectors))]
        for rows in groups.values():
            option = options[rows[0]] if options is not None else None
            found = self.store.search(vectors[rows], max(ks[r] for r in rows), [banned[r] for r in rows],
                                      where=option.where if option else None, params=option.params if option else None)
            for row, hits in zip(rows, found):
                ranked[row] = hits
        return ranked

    def search(self, reference: Query | Reference, text: str | None = None, k: int = 10,
               exclude_reference: bool = True, exclude: Iterable[str] = (), filter: FilterSpec = None,
               target_recall: float | None = None) -> SearchResult:
        """Top-``k`` gallery images for the reference modified by ``text`` (or for a
        QuerySpec); ``exclude`` lists further ids never returned; ``filter`` keeps only
        images whose metadata passes (``{"color": "red", "price": {"lt": 50}}``, see
        ``retrieval.filters``); ``target_recall`` picks a tuned approximate index's search
        effort from its stored recall curve."""
        options = self.search_options(filter, target_recall)
        return self.search_many([as_spec(reference, text)], k, exclude_reference, [exclude], options=[options])[0]

    def search_many(self, queries: Sequence[Query], k: int | Sequence[int] = 10, exclude_reference: bool = True,
                    exclude: Sequence[Iterable[str]] | None = None, batch_size: int = 64,
                    options: Sequence["SearchOptions | None"] | None = None) -> list[SearchResult]:
        """Results of many queries (specs or (reference, text) pairs), encoded ``batch_size``
        at a time; errors name the query's position."""
        results: list[SearchResult] = []
        ks = [k] * len(queries) if isinstance(k, int) else list(k)
        specs = []
        for n, query in enumerate(queries):  # every query checked before anything is encoded
            try:
                specs.append(self.check(as_spec(query)))
            except (KeyError, ValueError) as err:
                if len(queries) == 1:
                    raise
                raise QueryFailed(n, err) from err
        queries = specs
        for start in range(0, len(queries), batch_size):
            chunk = range(start, min(start + batch_size, len(queries)))
            prepared = []
            for n in chunk:
                try:
                    prepared.append(self.prepare(queries[n]))
                except (KeyError, ValueError) as err:
                    if len(queries) == 1:
                        raise
                    raise QueryFailed(n, err) from err
            began = time.perf_counter()
            vectors = self.encode(prepared)
            encode_ms = 1000 * (time.perf_counter() - began)
            results += self.rank(prepared, vectors, [ks[n] for n in chunk], exclude_reference,
                                 [exclude[n] for n in chunk] if exclude is not None else None, encode_ms,
                                 [options[n] for n in chunk] if options is not None else None)
        return results

    def session(self, session_id: str | None = None) -> "SearchSession":
        """A multi-turn session: every turn excludes the results of the earlier turns."""
        return SearchSession(self, session_id or secrets.token_urlsafe(12))

    def info(self) -> dict[str, Any]:
        """Model and index description (for ``/v1/info`` and ``opencir search --json``)."""
        manifest = self.store.manifest
        return {
            "model": {**manifest.get("model", {}), "fingerprint": self.fingerprint,
                      "directory": str(self.model_dir) if self.model_dir else None},
            "index": {
                "directory": str(self.store.directory),
                "count": len(self.store),
                "dim": self.store.dim,
                "backend": manifest["backend"]["name"],
                "backend_options": manifest["backend"]["options"],
                "generation": manifest["generation"],
                "created": manifest.get("created"),
                "updated": manifest.get("updated"),
            },
        }


def _hit(rank: int, record: Record, score: float) -> Hit:
    metadata = {k: v for k, v in (record.metadata or {}).items() if k != MASK_KEY} or None
    return Hit(rank, record.image_id, score, record.path, metadata)


class SearchSession:
    """Turns of one refinement dialogue; ``seen`` holds every id shown or used so far.
    At most ``max_turns`` turns (ValueError after that: start a new search)."""

    def __init__(self, retriever: Retriever, session_id: str, max_turns: int = 100) -> None:
        self.retriever = retriever
        self.session_id = session_id
        self.max_turns = max_turns
        self.turn_count = 0
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.last_used = time.monotonic()

    def search(self, reference: Query | Reference, text: str | None = None, k: int = 10, *,
               run: Callable[[set[str]], SearchResult] | None = None, filter: FilterSpec = None,
               target_recall: float | None = None) -> SearchResult:
        """A turn from any reference (or QuerySpec); earlier results and references stay
        excluded. ``run(excluded_ids)`` replaces the plain ``retriever.search`` (the server
        passes its micro-batcher)."""
        with self.lock:
            if self.turn_count >= self.max_turns:
                raise ValueError(f"session {self.session_id} has reached its {self.max_turns} turns; start a new search")
            excluded = set(self.seen)
            if run is None:
                result = self.retriever.search(reference, text, k, exclude_reference=True, exclude=excluded,
                                               filter=filter, target_recall=target_recall)
            else:
                result = run(excluded)
            self.turn_count += 1
            result.session_id = self.session_id
            result.turn = self.turn_count
            self.seen.update(hit.image_id for hit in result.hits)
            self.seen.update(result.reference_ids)
            self.last_used = time.monotonic()
            return result

    def refine(self, result_id: str, text: str, k: int = 10) -> SearchResult:
        """Continue from ``result_id`` (an id shown in this session) with a new text."""
        if result_id not in self.seen:
            raise KeyError(f"{result_id!r} was not shown in session {self.session_id}; refine from one of its results")
        return self.search(result_id, text, k)


class SessionStore:
    """Live sessions, bounded fairly: each is dropped ``ttl_s`` seconds after its last use;
    one client (e.g. a remote address) holds at most ``max_per_client`` (its own least
    recently used goes first), and when all ``max_sessions`` are taken the least recently
    used session of the client holding the most goes. A flood of new sessions from one
    client therefore only ever evicts that client's sessions.

    Sessions are stored by :meth:`add` once their first search has succeeded (a failed
    search never takes a slot)."""

    def __init__(self, retriever: Retriever, max_sessions: int = 1000, ttl_s: float = 3600.0,
                 max_per_client: int | None = None, max_turns: int = 100) -> None:
        self.retriever, self.max_sessions, self.ttl_s, self.max_turns = retriever, max_sessions, ttl_s, max_turns
        self.max_per_client = max_per_client or max_sessions
        self._sessions: OrderedDict[str, SearchSession] = OrderedDict()  # least recently used first
        self._client_of: dict[str, str] = {}
        self._by_client: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def _drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        client = self._client_of.pop(session_id, None)
        if client is not None:
            owned = self._by_client[client]
            owned.pop(session_id, None)
            if not owned:
                del self._by_client[client]

    def _expire(self) -> None:
        now = time.monotonic()
        while self._sessions:
            session_id, oldest = next(iter(self._sessions.items()))
            if now - oldest.last_used < self.ttl_s:
                break
            self._drop(session_id)

    def new(self) -> SearchSession:
        """A session that is not stored yet (see :meth:`add`)."""
        return SearchSession(self.retriever, secrets.token_urlsafe(12), self.max_turns)

    def add(self, session: SearchSession, client: str = "") -> None:
        """Store ``session`` for ``client``, evicting fairly (see the class docstring)."""
        with self._lock:
            self._expire()
            owned = self._by_client.setdefault(client, OrderedDict())
            while len(owned) >= self.max_per_client:
                self._drop(next(iter(owned)))
                owned = self._by_client.setdefault(client, OrderedDict())
            while len(self._sessions) >= self.max_sessions:
                heaviest = max(self._by_client.values(), key=len)
                self._drop(next(iter(heaviest)))
                owned = self._by_client.setdefault(client, OrderedDict())
            self._sessions[session.session_id] = session
            self._client_of[session.session_id] = client
            owned[session.session_id] = None

    def create(self, client: str = "") -> SearchSession:
        """A new session, stored at once (for callers that manage their own failures)."""
        session = self.new()
        self.add(session, client)
        return session

    def get(self, session_id: str) -> SearchSession:
        """The live session ``session_id``; KeyError when unknown or expired."""
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None:
                raise KeyError(f"unknown or expired session {session_id!r}; start a new search")
            self._sessions.move_to_end(session_id)
            self._by_client[self._client_of[session_id]].move_to_end(session_id)
            session.last_used = time.monotonic()
            return session

    def clients(self) -> dict[str, int]:
        """Sessions held per client."""
        with self._lock:
            return {client: len(owned) for client, owned in self._by_client.items()}
