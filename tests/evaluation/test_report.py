"""`opencir report`: a self-contained HTML page, opened in a real headless Chromium with the
network cut off, shows every section with content."""
from __future__ import annotations

from pathlib import Path

import pytest

from opencir.cli import main
from opencir.training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig
from opencir.training.run import run_from_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SECTIONS = ("results", "baselines", "curves", "shortcuts", "breakdown", "paraphrases", "queries")


@pytest.fixture(scope="module")
def evaluated_run(shapes_root, tmp_path_factory):
    """A tiny Combiner run (training curves) evaluated with `opencir eval --out RUN/eval`."""
    out = tmp_path_factory.mktemp("report") / "run"
    config = RunConfig(method="clip4cir", method_config={"stage": "combiner"},
                       backbone=BackboneConfig(arch="tiny-vit", pretrained=None),
                       dataset=DatasetConfig(name="cir-shapes", root=str(shapes_root)),
                       train=TrainConfig(epochs=2, batch_size=16, lr=1e-3, seed=0, amp=False),
                       output_dir=str(out), device="cpu", cache_dir=str(out.parent / "cache"))
    run_from_config(config)
    assert main(["eval", "--model", str(out / "best"), "--dataset", "cir-shapes", "--root", str(shapes_root),
                 "--split", "test", "--out", str(out / "eval"), "--device", "cpu",
                 "--cache-dir", str(out.parent / "cache")]) == 0
    return out


def test_report_file_is_self_contained(evaluated_run, tmp_path):
    assert main(["report", str(evaluated_run), "--out", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert text.count("data:image/png;base64,") == 3  # training curves, best grid, worst grid, all inline
    for key in SECTIONS:
        assert f'data-testid="section-{key}"' in text


def test_report_missing_input_is_one_clear_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is neither a demo folder" in err and "Traceback" not in err


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian chromium is not installed at {CHROMIUM}")
def test_report_opens_in_chromium_with_every_section(evaluated_run, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the python playwright package is not installed")
    from playwright.sync_api import expect

    report = tmp_path / "report.html"
    assert main(["report", str(evaluated_run), "--out", str(report)]) == 0
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(offline=True)  # no network: everything must be inline
            requests: list[str] = []
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri())
            for key in SECTIONS:
                section = page.get_by_test_id(f"section-{key}")
                expect(section).to_be_visible()
                assert section.locator(".missing").count() == 0, f"section {key} says: {section.inner_text()}"
            expect(page.get_by_test_id("protocol")).to_contain_text("cir-shapes / test")
            expect(page.get_by_test_id("protocol")).to_contain_text("reference kept in the ranking")
            expect(page.get_by_test_id("results-table")).to_contain_text("clip4cir")
            expect(page.get_by_test_id("rule")).to_contain_text("neither image-only")
            expect(page.get_by_test_id("breakdown-table")).to_contain_text("edit:recolour")
            expect(page.get_by_test_id("breakdown-table")).to_contain_text("held-out")
            expect(page.get_by_test_id("paraphrase-table")).to_contain_text("standard deviation")
            for image in ("curves", "best-grid", "worst-grid"):
                loaded = page.get_by_test_id(image).evaluate("img => img.complete && img.naturalWidth > 100")
                assert loaded, f"{image} did not render"
            assert all(url.startswith(("file:", "data:")) for url in requests), requests
        finally:
            browser.close()
