"""Metric functions against values worked out by hand (in the comments)."""
from __future__ import annotations

import pytest

from opencir.evaluation.metrics import (
    average_precision_at_k,
    fraction_recall_at_k,
    map_at_k,
    mean_of,
    recall_at_k,
    subset_recall_at_k,
)

RANKED = [
    ["a", "b", "c", "d"],  # target a at rank 1
    ["b", "c", "a", "d"],  # target a at rank 3
    ["c", "d", "b", "a"],  # target a at rank 4
    ["d", "c", "b", "e"],  # target a absent
]
TARGETS = [{"a"}] * 4


def test_recall_by_hand():
    # R@1: 1 of 4 = 25; R@3: queries 1,2 = 50; R@4: queries 1,2,3 = 75
    assert recall_at_k(RANKED, TARGETS, [1, 3, 4]) == {"R@1": 25.0, "R@3": 50.0, "R@4": 75.0}


def test_recall_any_of_several_targets():
    # query 4 has targets {a, e}: e at rank 4 -> hit at k=4 only
    out = recall_at_k(RANKED, [{"a"}, {"a"}, {"a"}, {"a", "e"}], [4])
    assert out == {"R@4": 100.0}


def test_subset_recall_by_hand():
    # query 1 subset {a,b,c,x} minus reference x: ranking a,b,c -> hit at 1
    # query 2 subset {c,a,d}: filtered ranking c,a,d -> target a at subset rank 2
    out = subset_recall_at_k(
        RANKED[:2], [{"a"}, {"a"}], [{"a", "b", "c", "x"}, {"c", "a", "d", "b0"}], [1, 2, 3], exclude=["x", "b0"]
    )
    assert out == {"Rsubset@1": 50.0, "Rsubset@2": 100.0, "Rsubset@3": 100.0}


def test_subset_recall_excludes_reference():
    # reference b is ranked first but removed: target c becomes subset rank 1
    out = subset_recall_at_k([["b", "c", "d"]], [{"c"}], [{"b", "c", "d"}], [1], exclude=["b"])
    assert out == {"Rsubset@1": 100.0}


def test_average_precision_by_hand():
    # relevant {a, c}; ranking a x c y: P@1 = 1, P@3 = 2/3 -> (1 + 2/3) / min(4, 2) = 5/6
    assert average_precision_at_k(["a", "x", "c", "y"], {"a", "c"}, 4) == pytest.approx(5 / 6)
    # k = 2: only a counted -> 1 / min(2, 2) = 0.5
    assert average_precision_at_k(["a", "x", "c", "y"], {"a", "c"}, 2) == pytest.approx(0.5)
    # more relevant than k: relevant {a,b,c}, k=1, a first -> 1/min(1,3) = 1
    assert average_precision_at_k(["a"], {"a", "b", "c"}, 1) == pytest.approx(1.0)


def test_map_by_hand():
    # q1 AP@2 = 0.5 (above); q2 ranking x a, relevant {a}: P@2=1/2 -> 0.5/1 = 0.5 -> mAP 50
    out = map_at_k([["a", "x", "c"], ["x", "a"]], [{"a", "c"}, {"a"}], [2])
    assert out == {"mAP@2": pytest.approx(50.0)}


def test_fraction_recall_by_hand():
    # relevant {a,b,c,d}; top-2 = a x -> 1/4; top-4 = a x b c -> 3/4; second query relevant {x}: 1, 1
    out = fraction_recall_at_k([["a", "x", "b", "c"], ["x", "y"]], [{"a", "b", "c", "d"}, {"x"}], [2, 4])
    assert out == {"R@2": pytest.approx(62.5), "R@4": pytest.approx(87.5)}


def test_mean_of_and_errors():
    assert mean_of({"R@5": 80.0, "Rsubset@1": 60.0}, ["R@5", "Rsubset@1"]) == 70.0
    with pytest.raises(KeyError, match="Rsubset@1"):
        mean_of({"R@5": 1.0}, ["R@5", "Rsubset@1"])
    with pytest.raises(ValueError, match="2 rankings but 1"):
        recall_at_k([["a"], ["b"]], [{"a"}], [1])
    with pytest.raises(ValueError, match="no relevant"):
        average_precision_at_k(["a"], set(), 1)
