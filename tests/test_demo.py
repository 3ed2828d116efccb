"""`opencir demo` end to end at a tiny size: every stage runs, every output is written, and
two runs with the same seed (fresh folders, fresh caches) give identical tables and weights."""
from __future__ import annotations

import json
import re

import torch
from safetensors.torch import load_file

from opencir.evaluation.report import write_report
from opencir.demo import COMBINER_ROW, DemoSettings, format_table, run_demo
from opencir.evaluation.spread import mean_and_std

SETTINGS = DemoSettings(train_triplets=120, val_triplets=20, test_triplets=20, clip_epochs=1, clip_batch_size=32,
                        stage1_epochs=1, stage2_epochs=2, batch_size=32, paraphrases=3)
ROWS = ["image-only", "text-only", "sum", "clip4cir stage 1 (sum, fine-tuned)", COMBINER_ROW]


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_demo_pipeline_writes_table_plot_grid_and_analysis(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENCIR_CACHE", str(tmp_path / "cache"))
    result = run_demo(tmp_path / "demo", SETTINGS, device="cpu")
    assert list(result["table"]) == ROWS
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["table"] == result["table"] and saved["split"] == "test" and saved["seeds"] == [0]
    for name in ("bar_plot", "retrieval_grid"):
        assert (tmp_path / "demo" / f"{'results' if name == 'bar_plot' else name}.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert COMBINER_ROW in out and "R@1" in out
    assert list((tmp_path / "cache").glob("small-clip-cirshapes-*.pt"))  # reused by the next run
    analysis = json.loads((tmp_path / "demo" / "evals" / "seed-0" / "clip4cir-combiner" / "analysis.json").read_text())
    shortcuts = analysis["shortcuts"]
    assert shortcuts["subset"] == "composition-only" and "neither image-only" in shortcuts["rule"]
    assert set(shortcuts["at"]) == {"R@1", "R@5", "R@10", "R@50"}
    breakdown = analysis["breakdown"]["clip4cir"]
    assert {"edit:add", "edit:remove", "edit:recolour", "edit:resize", "edit:move", "held-out", "seen"} >= set(breakdown)
    assert sum(breakdown[g]["queries"] for g in breakdown if g.startswith("edit:")) == 20
    assert len(analysis["paraphrases"]["variants"]) == 3
    again = run_demo(tmp_path / "demo", SETTINGS, device="cpu")
    assert "pretrain small CLIP" not in again["timings"]
    evals = tmp_path / "demo" / "evals" / "seed-0"
    from opencir.cli import main

    capsys.readouterr()
    assert main(["compare", str(evals / "sum"), str(evals / "clip4cir-combiner"), "--resamples", "200"]) == 0
    assert "95% CI" in capsys.readouterr().out  # two demo models compared on the same queries
    page = write_report(tmp_path / "demo").read_text()  # the report of a demo folder has every section filled
    missing = re.findall(r"class=\"missing\">([^<]*)", page)
    assert not missing and 'data-testid="curves"' in page and "edit:move" in page, missing

    # Issue 14 / issue 12 item 11: the whole pipeline from scratch again (new folder, new
    # cache) with the same seed prints the same table from bit-identical weights.
    monkeypatch.setenv("OPENCIR_CACHE", str(tmp_path / "cache-2"))
    fresh = run_demo(tmp_path / "demo-2", SETTINGS, device="cpu")
    assert "pretrain small CLIP" in fresh["timings"]
    assert format_table(fresh["table"]) == format_table(result["table"]) and fresh["table"] == result["table"]
    clips = [torch.load(next(c.glob("*.pt")), weights_only=True) for c in (tmp_path / "cache", tmp_path / "cache-2")]
    assert all(torch.equal(clips[0][k], clips[1][k]) for k in clips[0])
    for stage in ("clip4cir-stage1", "clip4cir-stage2"):
        a, b = (_weights(tmp_path / d / "runs" / "seed-0" / stage / "best") for d in ("demo", "demo-2"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage


def test_mean_and_sample_std_over_seeds():
    tables = [{"m": {"R@1": 10.0}}, {"m": {"R@1": 14.0}}, {"m": {"R@1": 12.0}}]
    mean, std = mean_and_std(tables)
    assert mean == {"m": {"R@1": 12.0}} and std == {"m": {"R@1": 2.0}}  # sample std of 10, 12, 14
    assert "12.00 ± 2.00" in format_table(mean, ("R@1",), std)


def test_demo_refuses_a_seed_count_below_one(capsys):
    from opencir.cli import main

    assert main(["demo", "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
