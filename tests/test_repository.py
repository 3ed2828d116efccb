"""Repository-level checks: CI runs the README's test command; every shipped recipe is valid."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from opencir.data import list_datasets
from opencir.methods.base import METHODS
from opencir.methods.io import list_methods
from opencir.recipes import RECIPE_DIR, list_recipes, recipe_path
from opencir.training.config import load_run_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    command = re.search(r"^TEST_COMMAND='(.+)'$", ci, re.MULTILINE).group(1)
    readme = (REPO / "README.md").read_text()
    assert f"\n{command}\n" in readme
    assert "opencir demo" in readme.split("```")[1]  # the first code block installs and runs the demo


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_is_a_valid_run_config(path):
    config = load_run_config(path)
    assert config.method in list_methods(), f"{path.name}: unknown method {config.method!r}"
    METHODS.get(config.method).config_class.from_dict(config.method_config)
    assert config.dataset.name in list_datasets(), f"{path.name}: unknown dataset {config.dataset.name!r}"


def test_recipes_ship_with_the_package_and_resolve_by_name():
    assert "clip4cir-fashioniq-stage1" in list_recipes()
    assert recipe_path("clip4cir-cirr-stage2") == RECIPE_DIR / "clip4cir-cirr-stage2.yaml"
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped recipe.*clip4cir-cirr-stage1"):
        recipe_path("clip4cir-cir-stage1")


def test_every_extra_demo_method_has_a_cirshapes_recipe():
    from opencir.demo import EXTRA_METHODS

    for name in EXTRA_METHODS:
        assert f"{name}-cirshapes" in list_recipes()
        assert load_run_config(f"{name}-cirshapes").method == name
