"""Datasets: shared types, the dataset registry, caption policies, image loading."""
from __future__ import annotations

from .registry import DATASETS, list_datasets, load_dataset
from .types import CIRDataset, ImageRecord, Triplet

__all__ = ["DATASETS", "CIRDataset", "ImageRecord", "Triplet", "list_datasets", "load_dataset"]
