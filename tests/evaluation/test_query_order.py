"""Queries are composed in length-sorted batches, and come back in the dataset's order."""
from __future__ import annotations

import random

import pytest
import torch

from opencir.backbones import BackboneSpec
from opencir.data import load_dataset
from opencir.encoding.features import TextFeatureCache
from opencir.evaluation.evaluator import embed_part
from opencir.methods.io import build_method


@pytest.mark.parametrize("name", ["sum", "clip4cir", "tg-cir", "pic2word"])
@torch.no_grad()
def test_sorted_batches_give_each_query_its_own_embedding(name, shapes_root):
    torch.manual_seed(0)
    method = build_method(name, BackboneSpec("tiny-vit")).eval()
    part = load_dataset("cir-shapes", shapes_root, "test")
    got = embed_part(method, part, batch_size=7)
    texts = [method.query_text(part, t, False, random.Random(0)) for t in part.triplets]
    assert len({len(t) for t in texts}) > 3  # lengths differ, so sorting reorders
    for row in (0, 5, len(part.triplets) - 1):
        t = part.triplets[row]
        alone = method.compose(got.table.gather([t.reference_id], "cpu"), method.encode_texts([texts[row]]))
        torch.testing.assert_close(got.queries[row], alone[0].float(), rtol=0, atol=1e-5)


@torch.no_grad()
def test_text_cache_gives_the_same_queries(shapes_root):
    torch.manual_seed(0)
    method = build_method("sum", BackboneSpec("tiny-vit")).eval()
    part = load_dataset("cir-shapes", shapes_root, "test")
    plain = embed_part(method, part, batch_size=8)
    cache = TextFeatureCache(method, "cpu", enabled=True)
    first = embed_part(method, part, batch_size=8, table=plain.table, text_cache=cache)
    cached = len(cache._rows)
    again = embed_part(method, part, batch_size=8, table=plain.table, text_cache=cache)
    assert cached == len({t for t in (method.query_text(part, x, False, random.Random(0)) for x in part.triplets)})
    assert len(cache._rows) == cached  # the second call encoded nothing new
    torch.testing.assert_close(first.queries, plain.queries, rtol=0, atol=1e-5)
    assert torch.equal(first.queries, again.queries)
