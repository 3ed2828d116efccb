"""OpenCIR: composed image retrieval methods, benchmarks, indexing and serving."""
from __future__ import annotations

__version__ = "0.1.0"
