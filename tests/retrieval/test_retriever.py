"""Retriever: composed queries against the index, reference exclusion, multi-turn sessions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from opencir.data.images import load_image
from opencir.retrieval.catalogue import read_catalogue
from opencir.retrieval.indexing import index_catalogue
from opencir.retrieval.retriever import Retriever, SessionStore
from opencir.encoding.features import method_transform


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, model_dir, image_folder):
    from opencir.methods import load_model

    out = tmp_path_factory.mktemp("retriever") / "idx"
    index_catalogue(load_model(model_dir), read_catalogue(image_folder), out, model_dir=model_dir)
    return out


@pytest.fixture(scope="module")
def retriever(index_dir, model_dir):
    with Retriever(index_dir, model_dir) as r:
        yield r


def golden_ranking(retriever, reference_path, text, k, banned=()):
    """Hand-computed ranking: compose(encode(reference), encode(text)) . gallery, sorted."""
    method = retriever.method
    _, transform = method_transform(method)
    with torch.no_grad():
        query = method.compose(method.encode_images(transform(load_image(reference_path))[None]),
                               method.encode_texts([text]))[0].numpy()
    ids = retriever.store.ids()
    scores = retriever.store.vectors(ids) @ query
    order = [i for i in np.argsort(-scores, kind="stable") if ids[i] not in banned][:k]
    return [ids[i] for i in order], scores[order]


def test_search_by_id_excludes_the_reference(retriever, image_folder):
    result = retriever.search("img004", "make the square blue", k=5)
    ids, scores = golden_ranking(retriever, image_folder / "img004.png", "make the square blue", 5, {"img004"})
    assert [h.image_id for h in result.hits] == ids
    np.testing.assert_allclose([h.score for h in result.hits], scores, atol=1e-5)
    assert [h.rank for h in result.hits] == [1, 2, 3, 4, 5]
    assert result.reference_id == "img004" and result.hits[0].path.endswith(f"{ids[0]}.png")
    included = retriever.search("img004", "make the square blue", k=5, exclude_reference=False)
    all_ids, _ = golden_ranking(retriever, image_folder / "img004.png", "make the square blue", 5)
    assert [h.image_id for h in included.hits] == all_ids


def test_search_by_image_file_and_pil_image(retriever, image_folder):
    by_path = retriever.search(image_folder / "img007.png", "larger", k=6)
    by_pil = retriever.search(Image.open(image_folder / "img007.png"), "larger", k=6)
    ids, scores = golden_ranking(retriever, image_folder / "img007.png", "larger", 6)
    assert by_path.reference_id is None  # an image is not an indexed id: nothing is excluded
    assert [h.image_id for h in by_path.hits] == [h.image_id for h in by_pil.hits] == ids
    np.testing.assert_allclose([h.score for h in by_path.hits], scores, atol=1e-5)


def test_exclude_list_and_k_bounds(retriever):
    first = retriever.search("img000", "red", k=3)
    again = retriever.search("img000", "red", k=3, exclude=[first.hits[0].image_id])
    assert first.hits[0].image_id not in [h.image_id for h in again.hits]
    assert [h.image_id for h in again.hits[:2]] == [h.image_id for h in first.hits[1:]]
    assert len(retriever.search("img000", "red", k=100).hits) == 23  # every image but the reference


@pytest.mark.parametrize("text, k, match", [("", 3, "must not be empty"), ("   ", 3, "must not be empty"),
                                            ("red", 0, "positive integer"), (None, 3, "must be a string")])
def test_bad_queries(retriever, text, k, match):
    with pytest.raises(ValueError, match=match):
        retriever.search("img000", text, k=k)


def test_unknown_reference_id(retriever):
    with pytest.raises(KeyError, match="image id 'nope' is not in the index"):
        retriever.search("nope", "red")


def test_session_refinement_excludes_earlier_results(retriever):
    session = retriever.session()
    first = session.search("img002", "make it green", k=4)
    chosen = first.hits[1].image_id
    second = session.refine(chosen, "now smaller", k=4)
    assert (first.turn, second.turn) == (1, 2) and first.session_id == second.session_id
    shown = {h.image_id for h in first.hits} | {"img002"}
    assert not shown & {h.image_id for h in second.hits}
    # the refined turn is the plain search minus everything the session has shown
    plain = retriever.search(chosen, "now smaller", k=4, exclude=shown)
    assert [h.image_id for h in second.hits] == [h.image_id for h in plain.hits]
    assert second.excluded == 5
    with pytest.raises(KeyError, match="was not shown in session"):
        session.refine("img023" if "img023" not in session.seen else "img022", "x")


def test_session_store_bounds_and_expiry(retriever):
    store = SessionStore(retriever, max_sessions=2, ttl_s=3600)
    a, b, c = store.create(), store.create(), store.create()
    assert len(store) == 2
    with pytest.raises(KeyError, match="unknown or expired session"):
        store.get(a.session_id)
    assert store.get(c.session_id) is c and store.get(b.session_id) is b
    expiring = SessionStore(retriever, ttl_s=0.0)
    session = expiring.create()
    with pytest.raises(KeyError, match="expired"):
        expiring.get(session.session_id)
