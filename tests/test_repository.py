"""Repository-level checks: CI runs the README's test command; every shipped recipe is valid."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from opencir.data import list_datasets
from opencir.methods.base import METHODS
from opencir.methods.io import list_methods
from opencir.training.config import load_run_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs" / "recipes").glob("*.yaml"))


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
