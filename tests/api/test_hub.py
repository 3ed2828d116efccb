"""Models on the Hub: save_pretrained + card, load by hf-hub: name from a real Hub cache
layout with the network off, revisions, and the commit operations push_to_hub sends."""
from __future__ import annotations

import json

import numpy as np
import pytest

import opencir
from opencir.methods.hub import commit_operations
from opencir.methods.io import load_model
from opencir.retrieval.catalogue import read_catalogue
from opencir.retrieval.store import IndexStore

REPO_ID = "opencir-test/clip4cir-tiny"


@pytest.fixture(scope="module")
def pretrained_dir(trained_run, tmp_path_factory):
    """The trained best model written as a self-contained (Hub-ready) directory."""
    model = load_model(trained_run / "best")
    return model.save_pretrained(tmp_path_factory.mktemp("pretrained") / "clip4cir-tiny")


@pytest.fixture(scope="module")
def hub_cache(pretrained_dir, tmp_path_factory, hub_cache_writer):
    cache = tmp_path_factory.mktemp("hf-cache")
    commit = hub_cache_writer(pretrained_dir, REPO_ID, cache)
    return cache, commit


def test_card_carries_the_runs_facts(trained_run, pretrained_dir, shapes_root):
    from huggingface_hub import ModelCard

    gallery = len(opencir.load_dataset("cir-shapes", shapes_root, "val").gallery_ids)

    card = ModelCard.load(pretrained_dir / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "opencir"
    assert {"opencir", "composed-image-retrieval", "clip4cir"} <= set(meta["tags"])
    assert meta["datasets"] == ["cir-shapes"]
    results = meta["model-index"][0]["results"]
    best = json.loads((trained_run / "best" / "config.json").read_text())
    metrics = {m["name"]: m["value"] for m in results[0]["metrics"]}
    assert results[0]["dataset"] == {"type": "cir-shapes", "name": "cir-shapes", "split": "val"}
    assert metrics["R@1"] == pytest.approx(best["card"]["metrics"]["R@1"], abs=1e-4)
    config = json.loads((pretrained_dir / "config.json").read_text())
    text = card.text
    for fact in ("`clip4cir`", "`tiny-vit`", "split `val`", f"gallery images: {gallery}", "reference excluded: False",
                 "training time", opencir.__version__, config["files"]["model.safetensors"]["sha256"]):
        assert fact in text, fact
    assert "backbone_weights" not in config  # save_pretrained is self-contained


def test_cache_layout_is_the_libraries_own(hub_cache):
    from huggingface_hub import scan_cache_dir

    cache, commit = hub_cache
    info = scan_cache_dir(cache)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO_ID and repo.repo_type == "model"
    (revision,) = repo.revisions
    assert revision.commit_hash == commit and revision.refs == frozenset({"main"})
    assert {f.file_name for f in revision.files} == {"config.json", "model.safetensors", "README.md"}


def test_load_by_hub_name_offline_encodes_like_the_index(hub_cache, trained_run, gallery_folder, built_index, cli,
                                                         tmp_path):
    cache, _ = hub_cache
    out = tmp_path / "vectors.npy"
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    done = cli("encode", "--model", f"hf-hub:{REPO_ID}", "--images", str(gallery_folder), "--out", str(out),
               "--batch-size", "5", "--device", "cpu", "--precision", "fp32", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    ids = json.loads(out.with_name("vectors.ids.json").read_text())["image_id"]
    assert summary["count"] == len(ids) == 12
    with IndexStore.open(built_index) as store:
        np.testing.assert_allclose(np.load(out), store.vectors(ids), rtol=0, atol=1e-6)


def test_hub_names_in_python_honour_offline_mode_and_revisions(hub_cache, monkeypatch, pretrained_dir, tmp_path,
                                                              hub_cache_writer):
    from huggingface_hub import constants

    cache, commit = hub_cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = opencir.load_model(f"hf-hub:{REPO_ID}", cache_dir=cache)
    same = type(model).from_pretrained(REPO_ID, cache_dir=str(cache))  # bare org/name, as in transformers
    pinned = opencir.load_model(f"hf-hub:{REPO_ID}", cache_dir=cache, revision=commit)
    probe = np.random.default_rng(0).random((2, 3, model.backbone.image_size, model.backbone.image_size)).astype("float32")
    import torch

    with torch.no_grad():
        a = model.embed_targets(model.encode_images(torch.from_numpy(probe)))
        b = same.embed_targets(same.encode_images(torch.from_numpy(probe)))
        c = pinned.embed_targets(pinned.encode_images(torch.from_numpy(probe)))
    assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        opencir.load_model(f"hf-hub:{REPO_ID}", cache_dir=cache, revision="v2")
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        opencir.load_model("hf-hub:opencir-test/absent", cache_dir=cache)
    with pytest.raises(ValueError, match="hf-hub:ORG/NAME"):
        opencir.load_model("hf-hub:no-slash")
    with pytest.raises(ValueError, match="holds a 'clip4cir' model, not a 'sum' model"):
        from opencir.methods.baselines import Sum

        Sum.from_pretrained(REPO_ID, cache_dir=str(cache))


def test_offline_miss_is_one_line_in_the_cli(tmp_path, gallery_folder, cli):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HOME": str(tmp_path / "home")}
    done = cli("encode", "--model", "hf-hub:opencir-test/absent", "--images", str(gallery_folder),
               "--out", str(tmp_path / "v.npy"), env=env)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not in the Hugging Face cache" in done.stderr
    assert "Traceback" not in done.stderr


def test_push_plan_holds_the_files_and_their_hashes(pretrained_dir, trained_run):
    from huggingface_hub import CommitOperationAdd

    config = json.loads((pretrained_dir / "config.json").read_text())
    operations = commit_operations(pretrained_dir)
    assert all(isinstance(op, CommitOperationAdd) for op in operations)
    by_path = {op.path_in_repo: op for op in operations}
    assert set(by_path) == {"config.json", "model.safetensors", "README.md"}
    weights = by_path["model.safetensors"].upload_info
    assert weights.sha256.hex() == config["files"]["model.safetensors"]["sha256"]
    assert weights.size == config["files"]["model.safetensors"]["size"]
    with pytest.raises(ValueError, match="lean checkpoint.*push a self-contained copy"):
        commit_operations(trained_run / "best")


def test_eval_takes_a_hub_name_offline(hub_cache, trained_run, shapes_root, cli, tmp_path):
    cache, _ = hub_cache
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    args = ("--dataset", "cir-shapes", "--root", str(shapes_root), "--split", "test", "--device", "cpu",
            "--precision", "fp32", "--no-analysis", "--cache-dir", str(tmp_path / "features"))
    by_name = cli("eval", "--model", f"hf-hub:{REPO_ID}", *args, env=env)
    assert by_name.returncode == 0, by_name.stderr
    local = cli("eval", "--model", str(trained_run / "best"), *args, env=env)
    assert local.returncode == 0, local.stderr
    assert json.loads(by_name.stdout) == json.loads(local.stdout)  # the same weights, the same metrics


def test_index_search_and_serve_take_a_hub_name_offline(hub_cache, gallery_folder, built_index, cli, tmp_path,
                                                        monkeypatch):
    """index records the hf-hub: name; search and serve load it from there by default."""
    from fastapi.testclient import TestClient
    from huggingface_hub import constants

    from opencir.retrieval.store import read_manifest
    from opencir.serving.app import create_app

    cache, _ = hub_cache
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    index = tmp_path / "hub.idx"
    done = cli("index", "--model", f"hf-hub:{REPO_ID}", "--images", str(gallery_folder), "--out", str(index),
               "--batch-size", "5", "--device", "cpu", "--precision", "fp32", env=env)
    assert done.returncode == 0, done.stderr
    assert read_manifest(index)["model"]["directory"] == f"hf-hub:{REPO_ID}"
    with IndexStore.open(index) as by_name, IndexStore.open(built_index) as local:
        ids = local.ids()
        np.testing.assert_allclose(by_name.vectors(ids), local.vectors(ids), rtol=0, atol=1e-6)
    query = ids[0]
    found = cli("search", "--index", str(index), "--ref-id", query, "--text", "add a red circle", "-k", "3",
                "--device", "cpu", "--json", env=env)  # no --model: the index's hf-hub: name
    assert found.returncode == 0, found.stderr
    hits = [hit["image_id"] for hit in json.loads(found.stdout)["results"]]
    assert len(hits) == 3 and query not in hits
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with TestClient(create_app(index)) as client:
        answer = client.post("/v1/search", json={"ref_id": query, "text": "add a red circle", "k": 3})
    assert answer.status_code == 200, answer.text
    assert [hit["image_id"] for hit in answer.json()["results"]] == hits
