"""The issue's "done when", end to end: a model trained by ``opencir demo`` is saved with its
card, read back by ``hf-hub:`` name from a Hub cache with the network off, and encodes
queries and gallery images to numpy equal to its index."""
from __future__ import annotations

import json

import numpy as np
import pytest

import opencir
from opencir.demo import DemoSettings, run_demo


@pytest.mark.slow
def test_demo_model_round_trips_through_the_hub_cache(tmp_path, monkeypatch, hub_cache_writer):
    from huggingface_hub import ModelCard, constants

    from opencir.retrieval.catalogue import read_catalogue
    from opencir.retrieval.indexing import index_catalogue
    from opencir.retrieval.retriever import Retriever
    from opencir.retrieval.store import IndexStore

    monkeypatch.setenv("OPENCIR_CACHE", str(tmp_path / "cache"))
    settings = DemoSettings(train_triplets=120, val_triplets=20, test_triplets=20, clip_epochs=1, stage1_epochs=1,
                            stage2_epochs=1, batch_size=32)
    run_demo(tmp_path / "demo", settings, device="cpu")
    best = tmp_path / "demo" / "runs" / "seed-0" / "clip4cir-stage2" / "best"
    card = ModelCard.load(best / "README.md")
    assert card.data.library_name == "opencir" and card.data.datasets == ["cir-shapes"]
    assert "model-index" in card.data.to_dict()

    shared = opencir.load_model(best).save_pretrained(tmp_path / "share")
    cache = tmp_path / "hf"
    hub_cache_writer(shared, "demo-org/cir-shapes-combiner", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = opencir.load_model("hf-hub:demo-org/cir-shapes-combiner", cache_dir=cache)
    assert json.loads((shared / "config.json").read_text())["card"]["metrics"] == \
        json.loads((best / "config.json").read_text())["card"]["metrics"]

    images = tmp_path / "demo" / "cir-shapes" / "images"
    catalogue = read_catalogue(images)
    entries = catalogue.entries[:16]
    catalogue.entries = entries
    index = tmp_path / "demo.idx"
    index_catalogue(opencir.load_model(best), catalogue, index, batch_size=8, model_dir=best)
    ids = [e.image_id for e in entries]
    with IndexStore.open(index) as store:
        np.testing.assert_allclose(model.encode_gallery(ids, catalogue=catalogue, batch_size=8), store.vectors(ids),
                                   rtol=0, atol=1e-6)
    queries = model.encode_queries(ids[:3], ["make it red", "remove the circle", "add a square"], catalogue=catalogue)
    with Retriever(index, method=model) as retriever:  # the Hub copy has the index's fingerprint
        for row, (image_id, text) in enumerate(zip(ids, ["make it red", "remove the circle", "add a square"])):
            np.testing.assert_allclose(queries[row], retriever.encode_query(image_id, text)[0], rtol=0, atol=1e-6)
