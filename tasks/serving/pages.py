"""What a person opens in a browser: the page to draw or upload a digit, its icon, and the API
docs (Swagger UI at ``/docs``).

Swagger UI's JavaScript and CSS come from the pinned ``fastapi-offline`` wheel and are served by
this app, following FastAPI's recipe for self-hosted docs assets: FastAPI's defaults load them
from a CDN, a blank page on a machine without internet. (``swagger-ui-bundle`` ships Swagger UI
4, which cannot read the OpenAPI 3.1 that FastAPI writes.) There is no ``/redoc``: ReDoc's
bundle always loads its logo from the internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

PAGE = Path(__file__).with_name("page.html")
DOCS_ASSETS = "/docs-assets"
# The page links the .svg; /favicon.ico answers browsers that ask for it unbidden (a JSON view).
FAVICON_URL = "/favicon.svg"
FAVICON_MAX_AGE_S = 24 * 60 * 60  # browsers keep the icon a day
# A white 7 on the page's blue: small enough to keep inline, so no asset file to ship.
FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="6" fill="#3a7bd5"/>'
    '<path d="M9 8h14l-8 17" fill="none" stroke="#fff" stroke-width="4" '
    'stroke-linecap="round" stroke-linejoin="round"/></svg>'
)


def docs_assets_folder() -> Path:
    """Swagger UI's bundle, as the installed fastapi-offline wheel ships it."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def add_pages(app: FastAPI) -> None:
    """Add ``/``, the favicon, ``/docs`` and its assets to ``app`` (created with
    ``docs_url=None, redoc_url=None``); none of them is part of the OpenAPI schema."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_folder()), name="docs-assets")
    for path, handler in (
        ("/", page),
        (FAVICON_URL, favicon),
        ("/favicon.ico", favicon),
        ("/docs", swagger_ui),
    ):
        app.add_api_route(path, handler, methods=["GET"], include_in_schema=False)


async def page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text())


async def favicon() -> Response:
    return Response(
        FAVICON_SVG,
        media_type="image/svg+xml",
        headers={"Cache-Control": f"public, max-age={FAVICON_MAX_AGE_S}"},
    )


async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="mlcycle serving: API docs",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=FAVICON_URL,
    )
