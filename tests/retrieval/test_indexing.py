"""Building indexes from catalogues: embeddings, resume after a kill, incremental updates."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from opencir.data.images import load_image
from opencir.methods import load_model
from opencir.retrieval.catalogue import read_catalogue
from opencir.retrieval.indexing import BUILD, delete_images, index_catalogue
from opencir.retrieval.retriever import Retriever
from opencir.retrieval.store import FingerprintMismatch, IndexStore, model_fingerprint
from opencir.encoding.features import method_transform
from encoder_calls import count_encoder_calls  # tests/retrieval/encoder_calls.py


class Killed(RuntimeError):
    """Stands in for the process being killed."""


def expected_embeddings(method, paths) -> np.ndarray:
    """Golden target embeddings: transform, encode and embed one image at a time."""
    _, transform = method_transform(method)
    with torch.no_grad():
        rows = [method.embed_targets(method.encode_images(transform(load_image(p))[None])) for p in paths]
    return torch.cat(rows).numpy()


def test_index_holds_the_target_embeddings(tmp_path, method, image_folder, model_dir):
    catalogue = read_catalogue(image_folder)
    report = index_catalogue(method, catalogue, tmp_path / "idx", shard_size=10, batch_size=4, model_dir=model_dir)
    assert (report.added, report.encoded_shards, report.total) == (24, 3, 24)
    with IndexStore.open(tmp_path / "idx") as store:
        assert store.ids() == [e.image_id for e in catalogue.entries]
        assert store.fingerprint == model_fingerprint(method)
        assert store.manifest["model"]["method"] == "sum" and store.manifest["model"]["directory"] == str(model_dir.resolve())
        vectors = store.vectors(store.ids())
    np.testing.assert_allclose(vectors, expected_embeddings(method, [e.path for e in catalogue.entries]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not (tmp_path / "idx" / BUILD).exists()


def test_resume_after_kill_does_not_reencode_finished_shards(tmp_path, model_dir, image_folder):
    catalogue = read_catalogue(image_folder)
    out = tmp_path / "idx"
    method = load_model(model_dir)
    calls = count_encoder_calls(method)

    def kill_after_two(shard: int) -> None:
        if shard == 1:
            raise Killed("killed after shard 1")

    with pytest.raises(Killed):
        index_catalogue(method, catalogue, out, shard_size=5, batch_size=5, on_shard=kill_after_two)
    assert calls == [5, 5]  # two shards of five images were encoded before the kill
    with pytest.raises(FileNotFoundError, match="interrupted.*resume"):
        IndexStore.open(out)

    calls.clear()
    report = index_catalogue(method, catalogue, out, shard_size=5, batch_size=5)
    assert calls == [5, 5, 4]  # only images 10..23: three shards
    assert (report.reused_shards, report.encoded_shards, report.added, report.total) == (2, 3, 24, 24)

    fresh = index_catalogue(method, catalogue, tmp_path / "fresh", shard_size=24, batch_size=24)
    assert fresh.total == 24
    with IndexStore.open(out) as resumed, IndexStore.open(tmp_path / "fresh") as reference:
        assert resumed.ids() == reference.ids()
        np.testing.assert_allclose(resumed.vectors(resumed.ids()), reference.vectors(reference.ids()), atol=1e-6)


def test_shards_of_another_model_are_not_reused(tmp_path, model_dir, other_model_dir, image_folder):
    catalogue = read_catalogue(image_folder)
    out = tmp_path / "idx"
    first = load_model(model_dir)
    with pytest.raises(Killed):
        index_catalogue(first, catalogue, out, shard_size=8, on_shard=lambda n: (_ for _ in ()).throw(Killed()))
    other = load_model(other_model_dir)
    calls = count_encoder_calls(other)
    report = index_catalogue(other, catalogue, out, shard_size=8, batch_size=8)
    assert sum(calls) == 24 and report.reused_shards == 0
    with IndexStore.open(out) as store:
        assert store.fingerprint == model_fingerprint(other)


def test_incremental_add_encodes_only_new_images_then_delete(tmp_path, model_dir, make_images):
    folder = tmp_path / "images"
    make_images(folder, 6, seed=1, prefix="a")
    method = load_model(model_dir)
    out = tmp_path / "idx"
    index_catalogue(method, read_catalogue(folder), out, backend="faiss", backend_options={"factory": "HNSW8"})
    make_images(folder, 4, seed=2, prefix="b")
    calls = count_encoder_calls(method)
    report = index_catalogue(method, read_catalogue(folder), out, backend="exact")  # backend of an existing index is kept
    assert sum(calls) == 4 and (report.added, report.already_indexed, report.total) == (4, 6, 10)
    assert delete_images(out, ["a000", "b003"]) == 8
    with IndexStore.open(out) as store:
        assert store.manifest["backend"]["name"] == "faiss"
        assert sorted(store.ids()) == ["a001", "a002", "a003", "a004", "a005", "b000", "b001", "b002"]
        hits = store.search(store.vectors(["b001"]), 8)[0]
        assert hits[0][0].image_id == "b001" and len(hits) == 8
    with pytest.raises(KeyError, match="not in the index"):
        delete_images(out, ["a000"])


def test_a_model_with_another_fingerprint_is_refused(tmp_path, model_dir, other_model_dir, image_folder):
    out = tmp_path / "idx"
    index_catalogue(load_model(model_dir), read_catalogue(image_folder), out)
    with pytest.raises(FingerprintMismatch, match="not the model that built the index"):
        index_catalogue(load_model(other_model_dir), read_catalogue(image_folder), out)
    with pytest.raises(FingerprintMismatch, match="not the model that built the index"):
        Retriever(out, other_model_dir)


def test_milvus_index_from_a_catalogue(tmp_path, model_dir, image_folder):
    method = load_model(model_dir)
    out = tmp_path / "idx"
    index_catalogue(method, read_catalogue(image_folder), out, backend="milvus", shard_size=7)
    with IndexStore.open(tmp_path / "idx") as store:
        assert len(store) == 24 and store.manifest["backend"]["name"] == "milvus"
        query = store.vectors(["img005"])
        hits = store.search(query, 3, [["img005"]])[0]
    assert "img005" not in [r.image_id for r, _ in hits] and len(hits) == 3
