"""Thread counts of the serving process: torch intra-op threads and FAISS's OpenMP pool."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def configure_threads(threads: int | None) -> dict[str, int]:
    """Set torch's and FAISS's thread counts to ``threads`` (None: leave the defaults);
    returns the counts in force."""
    faiss = None
    try:
        import faiss  # optional: the exact and FAISS backends use it
    except ImportError:  # pragma: no cover - faiss is an optional extra
        pass
    if threads is not None:
        torch.set_num_threads(threads)
        if faiss is not None:
            faiss.omp_set_num_threads(threads)
        log.info("torch and faiss use %d threads", threads)
    counts = {"torch": torch.get_num_threads()}
    if faiss is not None:
        counts["faiss"] = faiss.omp_get_max_threads()
    return counts
