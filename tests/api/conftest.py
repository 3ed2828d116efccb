"""Fixtures for the library face: a model trained by the real Trainer, a gallery folder,
its index, and a Hugging Face Hub cache written with huggingface_hub's own functions."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def write_hub_cache(folder: Path, repo_id: str, cache_dir: Path, revision: str = "main") -> str:
    """Lay ``folder``'s files into ``cache_dir`` exactly as ``hf_hub_download`` /
    ``snapshot_download`` do (blobs named by git-sha1 or LFS sha256, snapshot symlinks,
    ``refs/<revision>``, the per-commit tree listing), using huggingface_hub's own cache
    functions; returns the (made-up, content-derived) commit hash."""
    from huggingface_hub import constants
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    from huggingface_hub.file_download import (_cache_commit_hash_for_specific_revision, _create_symlink,
                                               _get_pointer_path, repo_folder_name)
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    storage = cache_dir / repo_folder_name(repo_id=repo_id, repo_type=constants.REPO_TYPE_MODEL)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    entries, blobs = {}, {}
    for path in files:
        data = path.read_bytes()
        lfs = path.suffix in (".safetensors", ".onnx", ".bin")  # the Hub stores these in LFS
        blob_id = git_hash(data)
        with path.open("rb") as handle:
            sha256 = sha_fileobj(handle).hex()
        entries[path.name] = TreeCacheEntry(size=len(data), blob_id=blob_id, lfs_sha256=sha256 if lfs else None,
                                            lfs_size=len(data) if lfs else None)
        blobs[path.name] = sha256 if lfs else blob_id
    commit = hashlib.sha1("".join(f"{n}:{b}" for n, b in sorted(blobs.items())).encode()).hexdigest()
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for path in files:
        blob = storage / "blobs" / blobs[path.name]
        shutil.copyfile(path, blob)
        pointer = Path(_get_pointer_path(str(storage), commit, path.name))
        pointer.parent.mkdir(parents=True, exist_ok=True)
        _create_symlink(str(blob), str(pointer), new_blob=False)
    _cache_commit_hash_for_specific_revision(str(storage), revision, commit)
    write_tree_cache(str(storage), commit, entries)
    return commit


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m opencir ARGS`` in a fresh process (so HF_HUB_OFFLINE etc. are read at import)."""
    import os

    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "opencir", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="session")
def hub_cache_writer():
    return write_hub_cache


@pytest.fixture(scope="session")
def cli():
    return run_cli


@pytest.fixture(scope="session")
def trained_run(shapes_root, tmp_path_factory) -> Path:
    """A CLIP4Cir Combiner trained for one epoch by the real Trainer on the tiny ViT: its
    run directory (``best/`` and ``last/`` are lean, the frozen backbone is stored once)."""
    from opencir.backbones import BackboneSpec
    from opencir.data import load_dataset
    from opencir.methods.io import build_method
    from opencir.training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig
    from opencir.training.trainer import Trainer

    out = tmp_path_factory.mktemp("api-run") / "run"
    config = RunConfig(method="clip4cir", method_config={"stage": "combiner"},
                       backbone=BackboneConfig(arch="tiny-vit", pretrained=None),
                       dataset=DatasetConfig(name="cir-shapes", root=str(shapes_root)),
                       train=TrainConfig(epochs=1, batch_size=32, lr=1e-3, seed=0, amp=False, eval_batch_size=64,
                                         select_metrics=("R@1", "R@5")),
                       output_dir=str(out), device="cpu", cache_dir=str(out / "cache"))
    torch.manual_seed(0)
    method = build_method("clip4cir", BackboneSpec("tiny-vit"), config.method_config)
    Trainer(method, config, load_dataset("cir-shapes", shapes_root, "train"),
            load_dataset("cir-shapes", shapes_root, "val")).fit()
    return out


@pytest.fixture(scope="session")
def gallery_folder(shapes_root, tmp_path_factory) -> Path:
    """12 cir-shapes test images in a plain folder (ids = file stems)."""
    folder = tmp_path_factory.mktemp("gallery") / "images"
    folder.mkdir()
    for path in sorted((shapes_root / "images").glob("*.png"))[:12]:
        shutil.copyfile(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def built_index(trained_run, gallery_folder, tmp_path_factory) -> Path:
    """An exact index of ``gallery_folder`` built by ``index_catalogue`` with the trained model."""
    from opencir.methods.io import load_model
    from opencir.retrieval.catalogue import read_catalogue
    from opencir.retrieval.indexing import index_catalogue

    out = tmp_path_factory.mktemp("index") / "gallery.idx"
    model_dir = trained_run / "best"
    index_catalogue(load_model(model_dir), read_catalogue(gallery_folder), out, batch_size=5, model_dir=model_dir)
    return out
