"""Stored reference features (queries by id skip the encoder) and a retriever that follows commits."""
from __future__ import annotations

import numpy as np
import pytest

from opencir.methods import load_model
from opencir.retrieval.catalogue import read_catalogue
from opencir.retrieval.indexing import delete_images, index_catalogue
from opencir.retrieval.retriever import Retriever
from opencir.retrieval.store import IndexStore, model_fingerprint
from encoder_calls import count_encoder_calls  # tests/retrieval/encoder_calls.py


@pytest.fixture()
def built(tmp_path, model_dir, image_folder):
    out = tmp_path / "idx"
    report = index_catalogue(load_model(model_dir), read_catalogue(image_folder), out, model_dir=model_dir)
    assert report.reference_features
    return out


def test_reference_features_are_stored_keyed_by_the_model_fingerprint(built, model_dir, image_folder):
    method = load_model(model_dir)
    with IndexStore.open(built) as store:
        assert store.manifest["reference_features_key"] == model_fingerprint(method)
        stored = store.reference_features("img005", model_fingerprint(method))
        assert store.reference_features("img005", "another-model") is None
    from opencir.data.images import load_image
    from opencir.encoding.features import method_transform

    _, transform = method_transform(method)
    fresh = method.encode_images(transform(load_image(image_folder / "img005.png"))[None])
    assert set(stored) == set(fresh)
    for name in fresh:
        np.testing.assert_allclose(stored[name], fresh[name].detach().numpy(), atol=1e-5)


def test_queries_by_id_skip_the_image_encoder_and_rank_the_same(built, model_dir):
    with Retriever(built, model_dir) as stored, Retriever(built, model_dir, use_stored_features=False) as fresh:
        calls = count_encoder_calls(stored.method)
        fresh_calls = count_encoder_calls(fresh.method)
        a = stored.search("img003", "make it red", k=8)
        b = fresh.search("img003", "make it red", k=8)
        assert calls == [] and fresh_calls == [1]
        assert [h.image_id for h in a.hits] == [h.image_id for h in b.hits]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-5)
        session = stored.session()
        first = session.search("img003", "make it red", k=3)
        session.refine(first.hits[0].image_id, "and smaller", k=3)  # a refinement turn is a by-id query
        assert calls == []


def test_reference_features_off_falls_back_to_the_encoder(tmp_path, model_dir, image_folder):
    out = tmp_path / "idx"
    report = index_catalogue(load_model(model_dir), read_catalogue(image_folder), out, reference_features="off")
    assert not report.reference_features
    with IndexStore.open(out) as store:
        assert not store.manifest["segment_features"]
    with Retriever(out, model_dir) as retriever:
        calls = count_encoder_calls(retriever.method)
        assert len(retriever.search("img003", "make it red", k=3).hits) == 3
        assert calls == [1]


def test_images_added_later_keep_their_features_too(tmp_path, model_dir, make_images):
    folder = tmp_path / "images"
    make_images(folder, 4, prefix="a")
    method = load_model(model_dir)
    index_catalogue(method, read_catalogue(folder), tmp_path / "idx")
    make_images(folder, 3, seed=5, prefix="b")
    index_catalogue(method, read_catalogue(folder), tmp_path / "idx")
    with IndexStore.open(tmp_path / "idx") as store:
        key = model_fingerprint(method)
        assert all(store.reference_features(i, key) is not None for i in store.ids())


def test_a_retriever_follows_commits_without_reopening(tmp_path, model_dir, make_images):
    folder = tmp_path / "images"
    make_images(folder, 6, prefix="a")
    method = load_model(model_dir)
    out = tmp_path / "idx"
    index_catalogue(method, read_catalogue(folder), out)
    with Retriever(out, model_dir) as retriever:
        first = retriever.store
        assert len(retriever.store) == 6
        make_images(folder, 2, seed=3, prefix="b")
        index_catalogue(method, read_catalogue(folder), out)
        assert len(retriever.store) == 8 and "b001" in retriever.store
        assert retriever.search("b001", "bigger", k=3).reference_id == "b001"
        delete_images(out, ["a002"])
        ranked = retriever.search("a000", "bigger", k=10)
        assert "a002" not in [h.image_id for h in ranked.hits] and len(ranked.hits) == 6
        with pytest.raises(KeyError):
            retriever.search("a002", "bigger")
        assert retriever.info()["index"]["generation"] == 3
        assert retriever.live.reloads == 2
        assert first is not retriever.store and len(first) == 6  # the old generation stays readable


def test_a_new_generation_built_by_another_model_is_refused_and_the_old_one_kept(tmp_path, model_dir,
                                                                                 other_model_dir, make_images):
    import shutil

    folder = tmp_path / "images"
    make_images(folder, 5)
    out = tmp_path / "idx"
    index_catalogue(load_model(model_dir), read_catalogue(folder), out)
    with Retriever(out, model_dir) as retriever:
        shutil.rmtree(out / "data")
        (out / "manifest.json").unlink()
        index_catalogue(load_model(other_model_dir), read_catalogue(folder), out)
        assert len(retriever.store) == 5  # still the generation of its own model
        assert retriever.search("img001", "bigger", k=2).hits


def test_live_milvus_lite_index_in_one_process(tmp_path, model_dir, make_images):
    """milvus-lite: the serving process itself writes (as the HTTP API does) and reads the new generation."""
    folder = tmp_path / "images"
    make_images(folder, 5, prefix="a")
    method = load_model(model_dir)
    out = tmp_path / "idx"
    index_catalogue(method, read_catalogue(folder), out, backend="milvus")
    with Retriever(out, model_dir) as retriever:
        assert len(retriever.store) == 5
        make_images(folder, 2, seed=4, prefix="b")
        index_catalogue(method, read_catalogue(folder), out)
        delete_images(out, ["a001"])
        ranked = retriever.search("b000", "bigger", k=10)
        assert {h.image_id for h in ranked.hits} == {"a000", "a002", "a003", "a004", "b001"}


def test_features_encoded_at_bf16_are_not_used_by_an_fp32_retriever(tmp_path, model_dir, image_folder):
    """Stored features are keyed by fingerprint and precision: by-id queries stay equal to re-encoding."""
    out = tmp_path / "idx"
    method = load_model(model_dir)
    index_catalogue(method, read_catalogue(image_folder), out, precision="bf16", reference_features="on")
    with IndexStore.open(out) as store:
        assert store.manifest["reference_features_key"] == f"{model_fingerprint(method)}+bf16"
    with Retriever(out, model_dir) as retriever:
        calls = count_encoder_calls(retriever.method)
        retriever.search("img002", "bigger", k=3)
        assert calls == [1]


def test_mixed_batches_of_stored_and_encoded_references_rank_like_re_encoding(built, model_dir, image_folder):
    """Several references (a gallery id with stored features, an image file) and a batch of
    queries: the stored rows and the encoded rows are put back in the right order."""
    from pathlib import Path

    from opencir.retrieval.query import QuerySpec, Weighted

    spec = QuerySpec((Weighted("img001"), Weighted(Path(image_folder / "img009.png"), 0.5), Weighted("img004")),
                     (Weighted("make it red"),))
    queries = [spec, ("img002", "bigger"), (Path(image_folder / "img010.png"), "bigger")]
    with Retriever(built, model_dir) as stored, Retriever(built, model_dir, use_stored_features=False) as fresh:
        calls = count_encoder_calls(stored.method)
        a = stored.search_many(queries, k=6)
        b = fresh.search_many(queries, k=6)
        assert calls == [2]  # one encoder call, for the two image files only
    for x, y in zip(a, b):
        assert [h.image_id for h in x.hits] == [h.image_id for h in y.hits]
        np.testing.assert_allclose([h.score for h in x.hits], [h.score for h in y.hits], atol=1e-5)
