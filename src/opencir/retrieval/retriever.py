"""Composed-image search over an index: ``Retriever`` and multi-turn ``SearchSession``.

>>> retriever = Retriever("idx", "runs/clip4cir/best")
>>> result = retriever.search("shoes/red_01", "make it blue", k=10)   # a gallery id
>>> result = retriever.search(Path("ref.jpg"), "make it blue")         # an image file
>>> session = retriever.session()
>>> first = session.search("shoes/red_01", "make it blue")
>>> second = session.refine(first.hits[2].image_id, "with laces")      # earlier hits stay excluded

A reference given as ``str`` is an image id of the index; a ``pathlib.Path`` or a
``PIL.Image.Image`` is an image. The reference image itself is excluded from results
by default (``exclude_reference``).
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Union

import numpy as np
import torch
from PIL import Image

from ..data.images import load_image, normalise_image
from .live import LiveIndex
from .store import IndexStore, Record, model_fingerprint

if TYPE_CHECKING:
    from ..methods.base import CIRMethod, Features

Reference = Union[str, Path, Image.Image]
MASK_KEY = "mask_path"


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_id": self.reference_id,
            "text": self.text,
            "k": self.k,
            "session_id": self.session_id,
            "turn": self.turn,
            "excluded": self.excluded,
            "timings_ms": self.timings_ms,
            "results": [hit.__dict__ for hit in self.hits],
        }


def check_text(text: object, max_chars: int | None = None) -> str:
    """The stripped modification text; ValueError when not a non-empty string (or too long)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError("text must not be empty: describe how the results should differ from the reference")
    if max_chars is not None and len(text) > max_chars:
        raise ValueError(f"text is {len(text)} characters long; the limit is {max_chars}")
    return text


class Retriever:
    """Loads an index and the model that built it; composes queries and searches.

    Give ``model_dir`` (a saved model directory) or an already built ``method``. A model
    whose fingerprint differs from the index's is refused (FingerprintMismatch).

    The index is live: every access to ``store`` returns the newest committed generation
    (see ``retrieval.live``), so a long-running retriever sees what ``opencir index`` adds
    and deletes without a restart. Queries by gallery id use the reference features stored
    at indexing when the index has them (``use_stored_features``), skipping the encoder.
    """

    def __init__(self, index_dir: str | Path, model_dir: str | Path | None = None, *,
                 method: "CIRMethod | None" = None, device: str | torch.device = "cpu",
                 use_stored_features: bool = True) -> None:
        from ..methods.io import load_model
        from ..encoding.features import method_transform

        if (model_dir is None) == (method is None):
            raise ValueError("give exactly one of model_dir or method")
        self.device = torch.device(device)
        self.method = load_model(model_dir, device=self.device) if model_dir is not None else method.to(self.device).eval()
        self.model_dir = Path(model_dir) if model_dir is not None else None
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
    def _reference_features(self, reference: Reference) -> tuple["Features", str | None]:
        """Image features of the reference and its index id (None when not an indexed id)."""
        needs_masks = self.method.requirements.needs_masks
        mask = None
        if isinstance(reference, str):
            store = self.store
            record = store.get(reference)
            stored = store.reference_features(reference, self.fingerprint) if self.use_stored_features else None
            if stored is not None:
                return {name: torch.from_numpy(value).to(self.device) for name, value in stored.items()}, reference
            image = load_image(record.path)
            if needs_masks:
                mask_path = (record.metadata or {}).get(MASK_KEY)
                if not mask_path:
                    raise ValueError(f"method {self.method.name!r} needs a mask for {reference!r}; index a manifest.csv with a mask_path column")
                mask = load_image(mask_path)
            reference_id: str | None = reference
        else:
            if needs_masks:
                raise ValueError(f"method {self.method.name!r} needs a segmentation mask of the reference: search by the id of an indexed image")
            image = load_image(reference) if isinstance(reference, Path) else normalise_image(reference)
            reference_id = None
        pixels = self.transform(image).unsqueeze(0).to(self.device)
        masks = self.transform(mask).unsqueeze(0).to(self.device) if mask is not None else None
        return self.method.encode_images(pixels, masks), reference_id

    @torch.no_grad()
    def encode_query(self, reference: Reference, text: str) -> tuple[np.ndarray, str | None]:
        """The (D,) float32 query embedding of (reference, text), and the reference's id."""
        text = check_text(text)
        reference_feats, reference_id = self._reference_features(reference)
        query = self.method.compose(reference_feats, self.method.encode_texts([text]))
        return query.float().cpu().numpy()[0], reference_id

    def search(self, reference: Reference, text: str, k: int = 10, exclude_reference: bool = True,
               exclude: Iterable[str] = ()) -> SearchResult:
        """Top-``k`` gallery images for the reference modified by ``text``; ``exclude``
        lists further ids never returned."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        start = time.perf_counter()
        text = check_text(text)
        query, reference_id = self.encode_query(reference, text)
        encoded = time.perf_counter()
        banned = set(exclude)
        if exclude_reference and reference_id is not None:
            banned.add(reference_id)
        ranked = self.store.search(query[None], k, [banned])[0]
        done = time.perf_counter()
        hits = [_hit(rank, record, score) for rank, (record, score) in enumerate(ranked, start=1)]
        return SearchResult(hits, text, k, reference_id, excluded=len(banned),
                            timings_ms={"encode": 1000 * (encoded - start), "search": 1000 * (done - encoded)})

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
    """Turns of one refinement dialogue; ``seen`` holds every id shown or used so far."""

    def __init__(self, retriever: Retriever, session_id: str) -> None:
        self.retriever = retriever
        self.session_id = session_id
        self.turns: list[SearchResult] = []
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.last_used = time.monotonic()

    def search(self, reference: Reference, text: str, k: int = 10) -> SearchResult:
        """A turn from any reference; earlier results (and references) stay excluded."""
        with self.lock:
            result = self.retriever.search(reference, text, k, exclude_reference=True, exclude=self.seen)
            result.session_id = self.session_id
            result.turn = len(self.turns) + 1
            self.turns.append(result)
            self.seen.update(hit.image_id for hit in result.hits)
            if result.reference_id is not None:
                self.seen.add(result.reference_id)
            self.last_used = time.monotonic()
            return result

    def refine(self, result_id: str, text: str, k: int = 10) -> SearchResult:
        """Continue from ``result_id`` (an id shown in this session) with a new text."""
        if result_id not in self.seen:
            raise KeyError(f"{result_id!r} was not shown in session {self.session_id}; refine from one of its results")
        return self.search(result_id, text, k)


class SessionStore:
    """At most ``max_sessions`` sessions, each dropped ``ttl_s`` seconds after its last use."""

    def __init__(self, retriever: Retriever, max_sessions: int = 1000, ttl_s: float = 3600.0) -> None:
        self.retriever, self.max_sessions, self.ttl_s = retriever, max_sessions, ttl_s
        self._sessions: OrderedDict[str, SearchSession] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if len(self._sessions) <= self.max_sessions and now - oldest.last_used < self.ttl_s:
                break
            self._sessions.popitem(last=False)

    def create(self) -> SearchSession:
        with self._lock:
            session = self.retriever.session()
            self._sessions[session.session_id] = session
            self._expire()
            return session

    def get(self, session_id: str) -> SearchSession:
        """The live session ``session_id``; KeyError when unknown or expired."""
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None:
                raise KeyError(f"unknown or expired session {session_id!r}; start a new search")
            self._sessions.move_to_end(session_id)
            session.last_used = time.monotonic()
            return session
