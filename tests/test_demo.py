"""`opencir demo` end to end at a tiny size: every stage runs and every output is written."""
from __future__ import annotations

import json

from opencir.demo import DemoSettings, run_demo


def test_demo_pipeline_writes_table_plot_and_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENCIR_CACHE", str(tmp_path / "cache"))
    settings = DemoSettings(train_triplets=120, val_triplets=20, test_triplets=20, clip_epochs=1, stage1_epochs=1,
                            stage2_epochs=2, batch_size=32)
    result = run_demo(tmp_path / "demo", settings, device="cpu")
    rows = ["image-only", "text-only", "sum", "clip4cir stage 1 (sum, fine-tuned)", "clip4cir (Combiner)"]
    assert list(result["table"]) == rows
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["table"] == result["table"] and saved["split"] == "test"
    for name in ("bar_plot", "retrieval_grid"):
        assert (tmp_path / "demo" / f"{'results' if name == 'bar_plot' else name}.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "clip4cir (Combiner)" in out and "R@1" in out
    assert list((tmp_path / "cache").glob("small-clip-cirshapes-*.pt"))  # reused by the next run
    again = run_demo(tmp_path / "demo", settings, device="cpu")
    assert "pretrain small CLIP" not in again["timings"]
