"""Shortcut analysis: hand-computed fractions, composition-only subset and gain."""
from __future__ import annotations

import numpy as np
import pytest

from opencir.evaluation.compare import PartScores
from opencir.evaluation.shortcuts import RULE, shortcut_summary


def _scores(hits_at_1, hits_at_5):
    ids = [f"q{i}" for i in range(len(hits_at_1))]
    return {"": PartScores(ids, {"R@1": 100.0 * np.array(hits_at_1, float), "R@5": 100.0 * np.array(hits_at_5, float),
                                 "Avg": np.zeros(len(ids))})}


def test_hand_computed_shortcut_summary():
    # 8 queries. R@1: image-only solves q0, q1; text-only solves q1, q2; method solves q0, q3, q4.
    image = _scores([1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0])
    text = _scores([0, 1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0, 0, 0])
    method = _scores([1, 0, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0])
    summary = shortcut_summary(method, image, text)
    assert summary["subset"] == "composition-only" and summary["rule"] == RULE and summary["queries"] == 8
    assert set(summary["at"]) == {"R@1", "R@5"}  # only recall-at-k metrics
    at1 = summary["at"]["R@1"]
    assert at1["image_only_solves"] == pytest.approx(25.0) and at1["text_only_solves"] == pytest.approx(25.0)
    assert at1["either_solves"] == pytest.approx(37.5)
    assert at1["composition_only_queries"] == 5  # q3..q7
    assert at1["method_recall_composition_only"] == pytest.approx(40.0)  # q3, q4 of 5
    assert at1["composition_gain"] == pytest.approx(37.5 - 25.0)
    at5 = summary["at"]["R@5"]
    assert at5["composition_only_queries"] == 4 and at5["method_recall_composition_only"] == pytest.approx(50.0)
    assert at5["composition_gain"] == pytest.approx(75.0 - 37.5)
