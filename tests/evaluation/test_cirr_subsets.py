"""CIRR subset rankings are derived from the global ranking (the official code filters
its global ranking to ``img_set.members``), so tied scores cannot make them disagree."""
from __future__ import annotations

import torch

from opencir.data.types import Triplet
from opencir.evaluation.evaluator import QueryEmbeddings, rank_part
from opencir.evaluation.protocols import subset_lists


def _embeddings(depth_members: list[str]) -> QueryEmbeddings:
    # gallery g0..g9 in 2-D; g2, g4, g6, g7 share one vector (tied scores for the query)
    vectors = {f"g{i}": [1.0, 0.1 * i] for i in range(10)}
    for name in ("g2", "g4", "g6", "g7"):
        vectors[name] = [0.9, 0.4]
    ids = list(vectors)
    gallery = torch.nn.functional.normalize(torch.tensor([vectors[i] for i in ids]), dim=-1)
    query = torch.nn.functional.normalize(torch.tensor([[0.9, 0.4]]), dim=-1)
    triplet = Triplet("q", "g0", ("t",), ("g6",), tuple(depth_members))
    return QueryEmbeddings([triplet], query, ids, gallery)


def test_subset_order_is_the_global_order_even_with_ties():
    members = ["g7", "g6", "g0", "g4", "g2", "g9"]  # listed in another order than the gallery's
    embeddings = _embeddings(members)
    rankings, _, subsets = rank_part(embeddings, 10, True, True)
    ranking = rankings["q"]
    assert "g0" not in ranking  # the reference is removed from the global ranking
    in_global_order = [i for i in ranking if i in members]
    assert subsets["q"] == [*in_global_order, "g0"]  # the reference ranks last (official score -1e11)
    # the protocol's own filter of the global ranking agrees with the stored subset ranking
    assert subset_lists(embeddings.triplets, rankings, 3) == [in_global_order]


def test_members_below_the_cut_follow_in_score_then_gallery_order():
    members = ["g7", "g6", "g0", "g4", "g2", "g1"]
    embeddings = _embeddings(members)
    rankings, _, subsets = rank_part(embeddings, 2, True, True)  # only 2 ids kept globally
    listed = [i for i in rankings["q"] if i in members]
    below = [m for m in ("g1", "g2", "g4", "g6", "g7") if m not in listed]  # ties: gallery order
    tied = [m for m in below if m != "g1"]
    assert subsets["q"] == [*listed, *tied, "g1", "g0"]  # g1 scores lower than the tied four
