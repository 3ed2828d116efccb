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


def test_licence_citation_changelog_and_classifiers():
    import tomllib

    import yaml

    import opencir

    licence = (REPO / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence  # the full text, not a pointer to it
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "Apache-2.0"
    assert "License :: OSI Approved :: Apache Software License" in project["classifiers"]
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in project["classifiers"])
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "Apache-2.0"
    assert str(citation["version"]) == project["version"] == opencir.__version__
    assert "## [Unreleased]" in (REPO / "CHANGELOG.md").read_text()
    assert "mkdocs" in " ".join(project["optional-dependencies"]["docs"])


def test_annotation_files_ship_with_their_licences():
    from annotation_files import SHIPPED

    notice = (SHIPPED / "NOTICE.md").read_text()
    assert "CC BY-NC 4.0" in notice and "non-commercial" in notice
    for folder in ("cirr", "circo", "imagenet_r"):
        assert (SHIPPED / folder / "LICENSE").stat().st_size > 500, folder
    assert "NonCommercial" in (SHIPPED / "circo" / "LICENSE").read_text()
    for path in ("cirr/captions/cap.rc2.val.json", "fashioniq/captions/cap.dress.val.json",
                 "shoes/relative_captions_shoes.json", "circo/annotations/val.json", "imagenet_r/imgnet_targets.txt"):
        assert (SHIPPED / path).stat().st_size > 1000, path


def test_nothing_reads_outside_the_repository():
    """The suite must pass on a fresh clone: no test or module refers to a sibling folder."""
    offenders = []
    for path in [*(REPO / "tests").rglob("*.py"), *(REPO / "src").rglob("*.py"), REPO / ".ci" / "run"]:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        if re.search(r"""["']shared["']\s*/|\.\./shared|parents\[[3-9]\]""", text):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders


def test_loader_tests_pass_from_a_copy_without_siblings(tmp_path):
    """Copy the tests and sources into an empty folder (no ../shared next to it) and run a
    loader test there, with the override variable unset."""
    import os
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "fresh" / "opencir"
    shutil.copytree(REPO / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    assert not (copy.parent.parent / "shared").exists() and not (copy.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k != "OPENCIR_ANNOTATIONS"}
    env.update(PYTHONPATH=str(copy / "src"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/data/test_circo.py", "tests/data/test_shoes.py"],
                            cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
