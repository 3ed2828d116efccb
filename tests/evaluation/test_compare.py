"""`opencir compare`: paired bootstrap intervals cover a known true difference, permutation
p-values, per-group rows, and refusal of results made under different protocols."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from opencir.cli import main
from opencir.data.check import load_annotations_only
from opencir.data.types import CIRDataset, ImageRecord, Triplet
from opencir.evaluation.compare import (
    check_same_protocol, compare_rankings, describe_evaluation, paired_bootstrap_ci, paired_permutation_p,
    per_query_scores)
from opencir.evaluation.protocols import RecallProtocol

ANNOTATIONS = Path(os.environ.get("OPENCIR_ANNOTATIONS", Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations"))


def _dataset(n_queries: int, gallery: int = 60) -> CIRDataset:
    ids = [f"g{i:03d}" for i in range(gallery)]
    images = {i: ImageRecord(i, None) for i in ids}
    triplets = [Triplet(f"q{q}", ids[q % gallery], ("text",), (ids[(q + 1) % gallery],), extra={"edit": "ab"[q % 2]})
                for q in range(n_queries)]
    return CIRDataset(name="constructed", split="test", root=None, triplets=triplets, images=images,
                      gallery_ids=ids, protocol=RecallProtocol(ks=(1, 5), exclude_reference=True))


def _ranking(t: Triplet, ids: list[str], hit: bool) -> list[str]:
    others = [i for i in ids if i not in (t.reference_id, t.target_id)]
    return [t.target_id, *others][:10] if hit else [*others[:5], t.target_id, *others[5:]][:10]


def test_bootstrap_interval_covers_the_true_difference_at_its_nominal_rate():
    """Population: A solves a query at rank 1 with p=0.30, B with p=0.40, paired through a
    shared difficulty; the true R@1 difference is +10 points. Over 120 independent query
    samples the 90% interval must contain +10 about 90% of the time."""
    rng = np.random.default_rng(7)
    dataset = _dataset(300)
    ids = dataset.gallery_ids
    covered, p_values = 0, []
    trials = 120
    for trial in range(trials):
        u = rng.random(len(dataset.triplets))
        v = np.where(rng.random(len(u)) < 0.7, u, rng.random(len(u)))  # B shares A's difficulty 70% of the time
        a = {t.query_id: _ranking(t, ids, u[i] < 0.30) for i, t in enumerate(dataset.triplets)}
        b = {t.query_id: _ranking(t, ids, v[i] < 0.40) for i, t in enumerate(dataset.triplets)}
        row = next(r for r in compare_rankings(dataset, a, b, n_resamples=500, confidence=0.9, seed=trial)
                   if r.group == "all" and r.metric == "R@1")
        covered += row.low <= 10.0 <= row.high
        p_values.append(row.p_value)
    assert 0.80 <= covered / trials <= 0.97, covered / trials
    assert np.median(p_values) < 0.05  # a 10-point paired gain on 300 queries is usually detected


def test_identical_results_have_zero_difference_and_p_one():
    dataset = _dataset(50)
    ranks = {t.query_id: _ranking(t, dataset.gallery_ids, i % 3 == 0) for i, t in enumerate(dataset.triplets)}
    rows = compare_rankings(dataset, ranks, ranks, n_resamples=200)
    assert all(r.diff == 0 and r.low == 0 and r.high == 0 and r.p_value == 1.0 for r in rows)
    assert {r.group for r in rows} == {"all"}


def test_per_query_values_average_to_the_official_metric_and_groups_are_reported():
    dataset = _dataset(40)
    ranks = {t.query_id: _ranking(t, dataset.gallery_ids, i < 10) for i, t in enumerate(dataset.triplets)}
    scores = per_query_scores(dataset, ranks)[""]
    assert scores.values["R@1"].mean() == pytest.approx(25.0) and scores.values["R@5"].mean() == pytest.approx(25.0)
    groups = {t.query_id: [f"edit:{t.extra['edit']}"] for t in dataset.triplets}
    rows = compare_rankings(dataset, ranks, ranks, group_of=lambda q: groups[q], n_resamples=200)
    assert {r.group for r in rows} == {"all", "edit:a", "edit:b"}
    assert next(r for r in rows if r.group == "edit:a").queries == 20


def test_hand_computed_interval_and_p_value_on_a_tiny_example():
    # differences of 4 queries: +100, +100, 0, 0 -> mean +50; every resample mean is a multiple of 25
    d = [np.array([100.0, 100.0, 0.0, 0.0])]
    low, high = paired_bootstrap_ci(d, n_resamples=4000, confidence=0.95, seed=1)
    assert low == 0.0 and high == 100.0
    # sign flips: |mean| >= 50 exactly when both non-zero differences keep the same sign: half the time
    assert paired_permutation_p(d, n_permutations=4000, seed=1) == pytest.approx(0.5, abs=0.03)


@pytest.mark.skipif(not (ANNOTATIONS / "fashioniq").is_dir(), reason="real FashionIQ annotations not present")
def test_different_gallery_conventions_are_refused_naming_the_difference():
    full = load_annotations_only("fashioniq", ANNOTATIONS / "fashioniq", "val", category="dress", gallery="full-val")
    split = load_annotations_only("fashioniq", ANNOTATIONS / "fashioniq", "val", category="dress", gallery="val-split")
    with pytest.raises(ValueError, match="gallery_convention: 'full-val' vs 'val-split'"):
        check_same_protocol(describe_evaluation(full), describe_evaluation(split))
    check_same_protocol(describe_evaluation(full), describe_evaluation(full))


def _eval(shapes_root, tmp_path, method, split="test"):
    out = tmp_path / f"{method}-{split}"
    assert main(["eval", "--method", method, "--arch", "tiny-vit", "--pretrained", "", "--dataset", "cir-shapes",
                 "--root", str(shapes_root), "--split", split, "--out", str(out), "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache"), "--no-analysis"]) == 0
    return out


def test_compare_command_on_two_eval_folders_and_refusal(shapes_root, tmp_path, capsys):
    a, b = _eval(shapes_root, tmp_path, "image-only"), _eval(shapes_root, tmp_path, "sum")
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--resamples", "300", "--out", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    assert "95% CI" in out and "edit:recolour" in out and "held-out" in out
    saved = json.loads((tmp_path / "cmp.json").read_text())
    row = next(r for r in saved["rows"] if r["group"] == "all" and r["metric"] == "R@1")
    assert row["low"] <= row["diff"] <= row["high"] and row["queries"] == 40

    # rankings files: the queries come from --dataset/--root/--split
    assert main(["compare", str(a / "rankings.json"), str(b / "rankings.json"), "--dataset", "cir-shapes",
                 "--root", str(shapes_root), "--split", "test", "--resamples", "200"]) == 0
    assert "edit:move" in capsys.readouterr().out
    assert main(["compare", str(a / "rankings.json"), str(b / "rankings.json")]) == 2
    assert "give --dataset NAME --root DIR" in capsys.readouterr().err

    other = _eval(shapes_root, tmp_path, "sum", split="val")
    assert main(["compare", str(a), str(other)]) == 2
    err = capsys.readouterr().err
    assert "not evaluated under the same protocol" in err and "split: 'test' vs 'val'" in err
    assert "Traceback" not in err


def _random_rankings(dataset, seed: int, depth: int | None = None) -> dict[str, list[str]]:
    """Per part, a random ranking of that part's gallery (whole, or the top ``depth`` + 1),
    with a target moved near the top for about 30% of the queries."""
    import random

    rng = random.Random(seed)
    out = {}
    for part in dataset.evaluation_parts().values():
        gallery = list(part.gallery_ids)
        for t in part.triplets:
            ids = rng.sample(gallery, min(len(gallery), depth + 1)) if depth else rng.sample(gallery, len(gallery))
            if t.target_ids and rng.random() < 0.3:
                if t.target_ids[0] in ids:
                    ids.remove(t.target_ids[0])
                ids.insert(rng.randrange(3), t.target_ids[0])
            out[t.query_id] = ids
    return out


@pytest.mark.skipif(not (ANNOTATIONS / "cirr").is_dir(), reason="real CIRR annotations not present")
def test_per_query_means_equal_the_official_cirr_metrics_including_rsubset():
    from dataclasses import replace

    from opencir.evaluation.protocols import evaluate_rankings

    full = load_annotations_only("cirr", ANNOTATIONS / "cirr", "val")
    dataset = replace(full, triplets=full.triplets[:200])
    rankings = _random_rankings(dataset, 0)
    official = evaluate_rankings(dataset, rankings)
    scores = per_query_scores(dataset, rankings)[""]
    assert set(scores.values) == set(official) and "Rsubset@1" in official and "Avg" in official
    for metric, value in official.items():
        assert scores.values[metric].mean() == pytest.approx(value), metric


@pytest.mark.skipif(not (ANNOTATIONS / "fashioniq").is_dir(), reason="real FashionIQ annotations not present")
def test_fashioniq_comparison_averages_over_categories_like_the_official_table():
    from opencir.evaluation.protocols import evaluate_rankings

    dataset = load_annotations_only("fashioniq", ANNOTATIONS / "fashioniq", "val")
    a, b = _random_rankings(dataset, 1, depth=50), _random_rankings(dataset, 2, depth=50)
    rows = compare_rankings(dataset, a, b, n_resamples=200)
    official_a, official_b = evaluate_rankings(dataset, a), evaluate_rankings(dataset, b)
    overall = next(r for r in rows if r.group == "all" and r.metric == "R@10")
    assert overall.a == pytest.approx(official_a["avg/R@10"]) and overall.b == pytest.approx(official_b["avg/R@10"])
    dress = next(r for r in rows if r.group == "dress" and r.metric == "R@50")
    assert dress.a == pytest.approx(official_a["dress/R@50"])
    assert {r.group for r in rows} == {"all", "dress", "shirt", "toptee"}
