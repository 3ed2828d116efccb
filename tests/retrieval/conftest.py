"""Fixtures for retrieval tests: a tiny model directory and a small generated image folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw


def draw_images(folder: Path, count: int, seed: int = 0, prefix: str = "img") -> list[Path]:
    """``count`` 32x32 PNGs: a coloured square on a coloured background each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        image = Image.new("RGB", (32, 32), tuple(int(c) for c in rng.integers(0, 255, 3)))
        x, y = (int(v) for v in rng.integers(0, 20, 2))
        ImageDraw.Draw(image).rectangle([x, y, x + 12, y + 12], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        path = folder / f"{prefix}{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def make_images():
    """The ``draw_images(folder, count, seed, prefix)`` helper."""
    return draw_images


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_spec) -> Path:
    """A saved ``sum`` model on the tiny ViT (random weights, seed 0)."""
    from opencir.methods.io import build_method, save_model

    torch.manual_seed(0)
    return save_model(build_method("sum", tiny_spec), tmp_path_factory.mktemp("models") / "sum")


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory, tiny_spec) -> Path:
    """Another ``sum`` model with different weights (another fingerprint)."""
    from opencir.methods.io import build_method, save_model

    torch.manual_seed(1)
    return save_model(build_method("sum", tiny_spec), tmp_path_factory.mktemp("models") / "sum-other")


@pytest.fixture()
def method(model_dir):
    from opencir.methods import load_model

    return load_model(model_dir)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """24 images, ids img000..img023."""
    folder = tmp_path_factory.mktemp("catalogue") / "images"
    draw_images(folder, 24)
    return folder
