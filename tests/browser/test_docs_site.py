"""The documentation site in Chromium with the network off, opened from disk as `make docs`
leaves it (site/index.html): the pages render with their diagram and tables, the navigation
leads to the generated references, and search answers from a file:// page."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import OfflinePage

pytestmark = pytest.mark.slow  # a browser, like every test of tests/browser


def test_the_front_page_renders_offline_with_its_diagram(
    offline_page: OfflinePage, docs_site: Path
):
    offline_page.goto((docs_site / "index.html").as_uri())
    page = offline_page.page
    assert page.locator("h1").first.inner_text().startswith("mlcycle")
    diagram = page.locator('img[src$="pipeline.svg"]')
    diagram.wait_for()
    assert diagram.evaluate("image => image.complete && image.naturalWidth") > 0
    page.get_by_role("link", name="Parameters").first.click()
    page.wait_for_url("**/reference/parameters.html")
    assert page.locator("table").count() >= 10  # a table per section, and one per model family
    assert page.get_by_text("train.cnn.channels", exact=True).is_visible()
    assert offline_page.blocked == []
    assert offline_page.console_errors == []


def test_search_answers_from_disk_without_the_network(offline_page: OfflinePage, docs_site: Path):
    offline_page.goto((docs_site / "guide" / "pipeline.html").as_uri())
    page = offline_page.page
    search = page.locator("input.md-search__input")  # in the header on a wide screen
    search.click()
    search.press_sequentially("champion", delay=30)
    results = page.locator(".md-search-result__item")
    results.first.wait_for(timeout=15_000)
    assert results.count() > 0
    assert offline_page.blocked == []  # mkdocs-material would fetch its file:// shim from unpkg
    assert offline_page.console_errors == []
