"""The encoder API: vectors out, equal to what ``opencir index`` stores and ``Retriever`` searches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from opencir.methods.io import load_model
from opencir.retrieval.catalogue import read_catalogue
from opencir.retrieval.retriever import Retriever
from opencir.retrieval.store import IndexStore


@pytest.fixture(scope="module")
def model(trained_run):
    return load_model(trained_run / "best")


def test_gallery_vectors_equal_the_index(model, gallery_folder, built_index):
    catalogue = read_catalogue(gallery_folder)
    ids = [e.image_id for e in catalogue.entries]
    vectors = model.encode_gallery([e.path for e in catalogue.entries], batch_size=5)
    assert vectors.dtype == np.float32 and vectors.shape == (len(ids), model.backbone.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with IndexStore.open(built_index) as store:
        stored = store.vectors(ids)
    np.testing.assert_allclose(vectors, stored, rtol=0, atol=1e-6)
    # the same through catalogue ids, PIL images, and in reversed order
    by_id = model.encode_gallery(ids, catalogue=catalogue, batch_size=5)
    np.testing.assert_array_equal(by_id, vectors)
    pil = model.encode_gallery([Image.open(e.path) for e in catalogue.entries], batch_size=5)
    np.testing.assert_allclose(pil, vectors, rtol=0, atol=1e-6)
    reverse = model.encode_gallery([e.path for e in reversed(catalogue.entries)], batch_size=5)
    np.testing.assert_allclose(reverse[::-1], vectors, rtol=0, atol=1e-6)


def test_query_vectors_equal_the_retrievers(model, trained_run, gallery_folder, built_index):
    catalogue = read_catalogue(gallery_folder)
    entries = catalogue.entries[:4]
    texts = ["make the red circle blue", "remove the square", "add a small green cross", "move it left"]
    vectors = model.encode_queries([e.path for e in entries], texts, batch_size=3)
    assert vectors.shape == (4, model.backbone.embed_dim) and vectors.dtype == np.float32
    with Retriever(built_index, trained_run / "best") as retriever:
        for row, (entry, text) in enumerate(zip(entries, texts)):
            by_path, _ = retriever.encode_query(entry.path, text)
            by_id, reference_id = retriever.encode_query(entry.image_id, text)
            assert reference_id == entry.image_id
            np.testing.assert_allclose(vectors[row], by_path, rtol=0, atol=1e-6)
            np.testing.assert_allclose(vectors[row], by_id, rtol=0, atol=1e-6)
    # different texts give different queries, the order of inputs is kept
    assert not np.allclose(vectors[0], vectors[1])
    swapped = model.encode_queries([entries[1].path, entries[0].path], [texts[1], texts[0]])
    np.testing.assert_allclose(swapped, vectors[[1, 0]], rtol=0, atol=1e-6)


def test_preprocess_is_the_methods_own(model, gallery_folder):
    from opencir.encoding.features import method_transform

    name, transform = method_transform(model)
    assert name == "targetpad"  # CLIP4Cir's TargetPad
    image = Image.open(next(gallery_folder.glob("*.png"))).convert("RGB")
    assert torch.equal(model.preprocess(image), transform(image))
    assert model.preprocess(image).shape == (3, model.backbone.image_size, model.backbone.image_size)


def test_tensors_on_request_and_device_argument(model, gallery_folder):
    paths = sorted(gallery_folder.glob("*.png"))[:3]
    tensor = model.encode_gallery(paths, convert_to_numpy=False, device="cpu")
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.numpy(), model.encode_gallery(paths))
    assert model.encode_gallery([]).shape == (0, model.backbone.embed_dim)


def test_bad_inputs_fail_with_one_clear_error(model, gallery_folder, tmp_path):
    paths = sorted(gallery_folder.glob("*.png"))[:2]
    with pytest.raises(ValueError, match="2 reference images but 1 texts"):
        model.encode_queries(paths, ["only one"])
    with pytest.raises(ValueError, match="text 1 must be a non-empty string"):
        model.encode_queries(paths, ["fine", "  "])
    with pytest.raises(ValueError, match="a list of images, not a single"):
        model.encode_gallery(str(paths[0]))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.encode_gallery(paths, batch_size=0)
    with pytest.raises(ValueError, match="image not found: .*missing.png"):
        model.encode_gallery([tmp_path / "missing.png"])


def test_mask_methods_need_masks(gallery_folder, shapes_root):
    import opencir

    offset = opencir.create_model("offset", "tiny-vit")
    paths = sorted((shapes_root / "images").glob("*.png"))[:2]
    with pytest.raises(ValueError, match="needs a segmentation mask per image"):
        offset.encode_gallery(paths)
    masks = [shapes_root / "masks" / p.name for p in paths]
    vectors = offset.encode_gallery(paths, masks=masks)
    assert vectors.shape == (2, offset.backbone.embed_dim)
