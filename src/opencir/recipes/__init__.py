"""Paper recipes shipped with the package: one YAML run config per method x dataset.

``opencir train --config clip4cir-fashioniq-stage1`` finds a recipe by name; a path to a
YAML file of one's own works the same way.
"""
from __future__ import annotations

from pathlib import Path

RECIPE_DIR = Path(__file__).parent


def list_recipes() -> list[str]:
    """Names of every shipped recipe (file names without ``.yaml``)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """An existing YAML path as is, else the shipped recipe of that name; clear error otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"config {str(name_or_path)!r} is neither a file nor a shipped recipe; recipes: {', '.join(list_recipes())}")
