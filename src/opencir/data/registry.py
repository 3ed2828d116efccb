"""The dataset registry: every benchmark (real or synthetic) is one registered factory.

A factory has the signature ``(root: Path, split: str, **options) -> CIRDataset`` and
reads the benchmark's official layout under ``root`` (never a path inside the package).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..registry import Registry
from .types import CIRDataset

DatasetFactory = Callable[..., CIRDataset]
DATASETS: Registry[DatasetFactory] = Registry("dataset")


def load_dataset(name: str, root: str | Path, split: str, **options: Any) -> CIRDataset:
    """Build split ``split`` of the registered dataset ``name`` from files under ``root``."""
    from . import _import_all  # noqa: F401  (registers every built-in dataset)

    factory = DATASETS.get(name)
    return factory(Path(root).expanduser().resolve(), split, **options)


def list_datasets() -> list[str]:
    """Names of every registered dataset."""
    from . import _import_all  # noqa: F401

    return DATASETS.names()
