"""The interactive API docs at ``/docs``, working offline.

FastAPI's default page loads Swagger UI from a CDN, so it stays blank on a machine
without internet. Here the page is FastAPI's own ``get_swagger_ui_html`` pointed at the
Swagger UI 5 files that the ``fastapi-offline`` package ships (Swagger UI 4, as in
``swagger-ui-bundle``, cannot read FastAPI's OpenAPI 3.1 schema), served by the app itself
under ``/docs/assets``. Without that package (it is in the ``serve`` extra) ``/docs``
answers with a page that says how to install it; ``/openapi.json`` works either way.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def swagger_ui_dir() -> str | None:
    """The folder of the Swagger UI files shipped by ``fastapi-offline``, or None."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return str(folder) if (folder / "swagger-ui-bundle.js").is_file() else None


def install_docs(app: FastAPI) -> None:
    """``GET /docs`` (Swagger UI from local assets); create the app with ``docs_url=None``."""
    assets = swagger_ui_dir()
    if assets is not None:
        app.mount(ASSETS, StaticFiles(directory=assets), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if assets is None:
            return HTMLResponse("<p>The interactive docs need the <code>fastapi-offline</code> package: "
                                "<code>pip install 'opencir[serve]'</code>. The schema is at "
                                "<a href='/openapi.json'>/openapi.json</a>.</p>", status_code=200)
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon.png")
