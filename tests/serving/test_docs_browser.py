"""Swagger UI at /docs renders in a real headless Chromium with every non-loopback request
blocked: its assets are served by the app (issue 16, service hygiene)."""
from __future__ import annotations

from urllib.parse import urlparse

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS  # the same Chromium setup as the web-page tests

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian chromium is not installed at {CHROMIUM}"),
]


def test_swagger_ui_renders_offline(live_server):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the python playwright package is not installed")
    local = urlparse(live_server).netloc
    outside: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)

            def offline(route):
                if urlparse(route.request.url).netloc == local:
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto(f"{live_server}/docs")
            playwright_api.expect(page.locator(".swagger-ui .info .title")).to_contain_text("OpenCIR search")
            playwright_api.expect(page.locator("#operations-default-search_v1_search_post")).to_be_visible()
        finally:
            browser.close()
    assert outside == []
