"""Micro-batching: concurrent queries share one encoder call and one index search.

Request threads call :meth:`MicroBatcher.search` with a prepared query (images already
read and preprocessed in that thread). One worker thread takes the first waiting query
and every query already queued behind it (up to ``max_size``), then runs
``retriever.encode`` and ``retriever.rank`` once for the whole batch and hands each
caller its result.

The worker waits for more queries (at most ``max_wait_ms`` after the first) only while
other requests are **arriving**: announced with :meth:`MicroBatcher.arriving` (the HTTP
endpoint opens one per request, before it reads the body) and not yet submitted. A lone
query therefore runs at once, without the wait; under load the encoder runs large
batches instead of many one-image forwards competing for the cores, and queries that
arrive while a batch runs form the next one. ``max_size=1`` turns batching off: each
request encodes in its own thread (the path before micro-batching).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..retrieval.retriever import PreparedQuery, Retriever, SearchOptions, SearchResult

log = logging.getLogger(__name__)

POLL_S = 0.0005
"""How often a waiting worker looks again at the queue while requests are arriving."""


class Arrival:
    """One announced request (see :meth:`MicroBatcher.arriving`); done when its query is
    submitted or the request ends, whichever comes first."""

    def __init__(self, batcher: "MicroBatcher") -> None:
        self._batcher, self._open = batcher, True

    def done(self) -> None:
        with self._batcher._lock:
            if self._open:
                self._open = False
                self._batcher._arriving -= 1


@dataclass
class _Job:
    prepared: PreparedQuery
    k: int
    exclude: set[str]
    options: SearchOptions | None = None
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Groups concurrent queries into batches of at most ``max_size``, waiting at most
    ``max_wait_ms`` after the first while other requests are arriving (see the module
    docstring)."""

    def __init__(self, retriever: Retriever, max_size: int = 16, max_wait_ms: float = 3.0) -> None:
        self.retriever, self.max_size, self.max_wait_s = retriever, max_size, max_wait_ms / 1000
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._arriving = 0
        self.batches = 0
        self.queries = 0
        if max_size > 1:
            self._thread = threading.Thread(target=self._loop, name="opencir-micro-batcher", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Announce a request that will submit a query soon (its body is being read, its
        images prepared): while any is open the worker waits for it, up to ``max_wait_ms``.
        Pass the yielded :class:`Arrival` to :meth:`search`."""
        with self._lock:
            self._arriving += 1
        arrival = Arrival(self)
        try:
            yield arrival
        finally:
            arrival.done()

    def search(self, prepared: PreparedQuery, k: int, exclude: Iterable[str] = (),
               options: SearchOptions | None = None, arrival: Arrival | None = None) -> SearchResult:
        """The result of one prepared query (blocks the calling thread until its batch ran);
        ``options``: its filter and search parameters (``Retriever.search_options``);
        ``arrival``: this request's announcement, closed as the query is submitted."""
        if arrival is not None:
            arrival.done()
        if not self.enabled:
            return self._run([_Job(prepared, k, set(exclude), options)])[0]
        job = _Job(prepared, k, set(exclude), options)
        self._queue.put(job)
        return job.future.result()

    def stats(self) -> dict[str, float]:
        """Batches run, queries answered and their mean batch size so far."""
        return {"batches": self.batches, "queries": self.queries,
                "mean_batch_size": round(self.queries / self.batches, 3) if self.batches else 0.0,
                "arriving": self._arriving}

    def close(self) -> None:
        """Stop the worker after the batches already queued."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self, jobs: list[_Job]) -> list[SearchResult]:
        start = time.perf_counter()
        vectors = self.retriever.encode([j.prepared for j in jobs])
        encode_ms = 1000 * (time.perf_counter() - start)
        results = self.retriever.rank([j.prepared for j in jobs], vectors, [j.k for j in jobs], True,
                                      [j.exclude for j in jobs], encode_ms, [j.options for j in jobs])
        self.batches += 1
        self.queries += len(jobs)
        return results

    def _collect(self, first: _Job) -> list[_Job]:
        """``first``, the jobs queued behind it, and those submitted within the wait by
        requests that were arriving."""
        jobs = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._arriving == 0:
                    break
                try:
                    job = self._queue.get(timeout=min(remaining, POLL_S))
                except queue.Empty:
                    continue
            if job is None:
                self._queue.put(None)  # finish this batch, then stop
                break
            jobs.append(job)
        return jobs

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = self._collect(first)
            try:
                results = self._run(jobs)
            except Exception:  # isolate the failing query: run each on its own
                log.exception("a micro-batch of %d queries failed; running them one by one", len(jobs))
                for job in jobs:
                    try:
                        job.future.set_result(self._run([job])[0])
                    except Exception as err:  # noqa: BLE001 - handed to the caller
                        job.future.set_exception(err)
                continue
            for job, result in zip(jobs, results):
                job.future.set_result(result)
