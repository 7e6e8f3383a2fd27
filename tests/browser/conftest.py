"""Browser tests: Debian's Chromium, driven by Playwright, with the network off.

Every page is opened as a user would open it on a machine without internet: any request that
leaves the loopback interface (or ``file://``) is refused and recorded, so a test can say that
the page needed nothing from outside. A failing test leaves a screenshot of what the browser
showed in ``reports/screenshots/<test name>.png`` (``MLCYCLE_SCREENSHOTS`` moves it).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers import REPO_ROOT

SCREENSHOTS = Path(os.environ.get("MLCYCLE_SCREENSHOTS", REPO_ROOT / "reports" / "screenshots"))
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class OfflinePage:
    """A Playwright page whose requests beyond this machine are refused (and listed)."""

    page: object  # playwright.sync_api.Page
    blocked: list[str] = field(default_factory=list)  # URLs the page tried to fetch outside
    console_errors: list[str] = field(default_factory=list)  # console.error and page errors

    def goto(self, url: str, **options: object) -> None:
        self.page.goto(url, **options)


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("file", "data", "blob", "about"):
        return True
    return (parts.hostname or "") in LOCAL_HOSTS


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """Debian's chromium under Playwright (no browser download); skipped where it is missing."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def offline_page(chromium, request: pytest.FixtureRequest) -> Iterator[OfflinePage]:
    """A fresh browser context with the network off; a screenshot when the test fails."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    offline = OfflinePage(page)

    def refuse_outside(route) -> None:
        if _is_local(route.request.url):
            route.continue_()
        else:
            offline.blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", refuse_outside)
    page.on("console", lambda m: m.type == "error" and offline.console_errors.append(m.text))
    page.on("pageerror", lambda error: offline.console_errors.append(str(error)))
    try:
        yield offline
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            try:
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
            except Exception as error:  # the page itself may be what broke
                print(f"no screenshot of {request.node.name}: {error}")
        context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item: the page fixture screenshots failed calls."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
