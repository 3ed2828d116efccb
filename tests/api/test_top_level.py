"""``import opencir``: a flat, explicit, lazy top level; py.typed shipped."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import opencir

REPO = Path(__file__).resolve().parents[2]
PUBLIC = {"list_methods", "list_datasets", "list_recipes", "create_model", "load_model", "evaluate", "Retriever",
          "__version__"}


def test_import_does_no_work():
    code = ("import sys, opencir; heavy = [m for m in ('torch', 'numpy', 'open_clip', 'huggingface_hub') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src")}).stdout.strip()
    assert out == "[]"


def test_all_lists_the_public_names_and_each_resolves():
    assert PUBLIC <= set(opencir.__all__)
    assert dir(opencir) == sorted(opencir.__all__)
    for name in opencir.__all__:
        assert getattr(opencir, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        opencir.nope


def test_listings_and_version():
    assert "clip4cir" in opencir.list_methods() and "sum" in opencir.list_methods()
    assert "cirr" in opencir.list_datasets()
    assert "clip4cir-cirr-stage2" in opencir.list_recipes()
    assert "ViT-B-16/openai" in opencir.list_backbones() and "tiny-vit" in opencir.list_backbones()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert opencir.__version__ == pyproject["project"]["version"]


def test_py_typed_ships_with_the_package():
    assert (REPO / "src" / "opencir" / "py.typed").is_file()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["opencir"]


def test_create_model_by_method_and_backbone_name():
    model = opencir.create_model("clip4cir", "tiny-vit", {"stage": "combiner"})
    assert isinstance(model, opencir.CIRMethod) and model.name == "clip4cir" and not model.training
    assert model.backbone.spec.arch == "tiny-vit"
    with pytest.raises(KeyError, match="unknown method 'nope'.*clip4cir"):
        opencir.create_model("nope", "tiny-vit")


def test_evaluate_by_dataset_name(shapes_root):
    model = opencir.create_model("sum", "tiny-vit")
    result = opencir.evaluate(model, "cir-shapes", root=shapes_root, split="val", batch_size=64)
    assert set(result.metrics) >= {"R@1", "R@10"}
    same = opencir.evaluate(model, opencir.load_dataset("cir-shapes", shapes_root, "val"), batch_size=64)
    assert same.metrics == result.metrics
    with pytest.raises(ValueError, match="give root="):
        opencir.evaluate(model, "cir-shapes")
