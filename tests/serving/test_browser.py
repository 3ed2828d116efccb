"""The web page in a real headless Chromium: upload, search, refine from a result, pick from the gallery."""
from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture()
def page(live_server):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the python playwright package is not installed")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{live_server}/")
            yield page
        finally:
            browser.close()


def result_ids(page) -> list[str]:
    return page.get_by_test_id("result").evaluate_all("cards => cards.map(c => c.dataset.id)")


def test_upload_search_then_refine_from_a_result(page, shapes_root):
    from playwright.sync_api import expect

    expect(page.get_by_test_id("info")).to_contain_text("136 images")
    expect(page.get_by_test_id("gallery-item").first).to_be_visible()

    reference = next(iter(sorted((shapes_root / "images").glob("*.png"))))
    page.get_by_test_id("upload").set_input_files(str(reference))
    expect(page.get_by_test_id("reference-preview")).to_have_attribute("data-reference", "upload")
    page.get_by_test_id("text").fill("make the circle blue")
    page.get_by_test_id("search").click()
    expect(page.get_by_test_id("results")).to_have_attribute("data-turn", "1")
    expect(page.get_by_test_id("result")).to_have_count(12)
    first = result_ids(page)
    scores = page.get_by_test_id("result").first.locator(".score")
    expect(scores).to_contain_text("#1 ·")
    loaded = page.get_by_test_id("result").first.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
    assert loaded, "the result thumbnail did not load"

    # refine: click the second result, type a new modification, search again in the same session
    page.get_by_test_id("result").nth(1).click()
    expect(page.get_by_test_id("reference-preview")).to_have_attribute("data-reference", first[1])
    page.get_by_test_id("text").fill("now make it small")
    page.get_by_test_id("search").click()
    expect(page.get_by_test_id("results")).to_have_attribute("data-turn", "2")
    expect(page.get_by_test_id("session")).to_contain_text("turn 2")
    second = result_ids(page)
    assert len(second) == 12 and not set(first) & set(second)

    # an empty text is caught with a message; the page keeps working
    page.get_by_test_id("text").fill("   ")
    page.get_by_test_id("search").click()
    expect(page.get_by_test_id("error")).to_contain_text("Type how the results should differ")


def test_pick_a_reference_from_the_gallery(page):
    from playwright.sync_api import expect

    item = page.get_by_test_id("gallery-item").nth(3)
    expect(item).to_be_visible()
    chosen = item.get_attribute("data-id")
    item.click()
    expect(page.get_by_test_id("reference-preview")).to_have_attribute("data-reference", chosen)
    page.get_by_test_id("text").fill("add a red square")
    page.get_by_test_id("search").click()
    expect(page.get_by_test_id("results")).to_have_attribute("data-turn", "1")
    assert chosen not in result_ids(page)  # the reference is excluded
