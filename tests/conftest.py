"""Shared fixtures: tiny backbones and a small generated cir-shapes benchmark."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from annotation_files import ANNOTATIONS  # noqa: E402,F401  (re-exported; shipped in tests/fixtures/annotations)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_spec():
    from opencir.backbones import BackboneSpec

    return BackboneSpec("tiny-vit")


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A small cir-shapes benchmark generated once per test session."""
    from opencir.data.synthetic import generate_cir_shapes

    root = tmp_path_factory.mktemp("cir-shapes")
    generate_cir_shapes(root, seed=0, train_triplets=160, val_triplets=40, test_triplets=40, image_size=32)
    return root
