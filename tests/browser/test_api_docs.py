"""The serving app's API docs (Swagger UI at /docs) render in Chromium with the network off:
their JavaScript and CSS are served by the app itself, not a CDN.

The docs need no model: the app runs in this process with none loaded (uvicorn in a thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tasks.core.config import load_params
from tasks.serving.app import create_fixed_app
from tasks.serving.model import ModelHolder
from tests.browser.conftest import OfflinePage
from tests.helpers import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

OPERATIONS = [
    ("post", "/predict"),
    ("post", "/predict/image"),
    ("post", "/feedback"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metadata"),
    ("get", "/metrics"),
    ("post", "/admin/reload"),
]


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    """The serving app on a free loopback port, no model loaded, no registry behind it."""
    import uvicorn

    params = load_params(REPO_ROOT / "params.yaml").serve
    holder = ModelHolder("digits", params.alias)
    app = create_fixed_app(params, "digits", holder)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="docs-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_docs_render_swagger_ui_offline(offline_page: OfflinePage, app_url: str, tmp_path):
    page = offline_page.page
    offline_page.goto(f"{app_url}/docs")
    page.locator('.opblock-summary-path[data-path="/predict"]').wait_for(timeout=15_000)
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)

    assert page.title() == "mlcycle serving: API docs"
    assert page.locator(".info .title").inner_text().startswith("mlcycle serving")
    shown = [
        (block.locator(".opblock-summary-method").inner_text().lower(), block_path)
        for block in page.locator(".opblock").all()
        if (block_path := block.locator(".opblock-summary-path").get_attribute("data-path"))
    ]
    assert shown == OPERATIONS
    assert page.get_by_text("Unable to render this definition").count() == 0

    page.locator('.opblock-summary-path[data-path="/predict"]').click()
    page.get_by_text("Try it out").wait_for()
    assert page.locator(".opblock-body").get_by_text("Request body").first.is_visible()
    page.screenshot(path=str(tmp_path / "docs-predict.png"), full_page=True)
    assert offline_page.blocked == [] and offline_page.console_errors == []
