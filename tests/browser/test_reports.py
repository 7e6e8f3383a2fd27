"""The reports a user opens as files, in Chromium with the network off: `dvc plots show`'s page,
the GX Data Docs and the drift report of `mlcycle monitor`, each made by the real command in a
copy of a project that ran the pipeline (``ran_project``)."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from tests.browser.conftest import OfflinePage
from tests.integration.helpers import copy_project, dvc, mlcycle

pytestmark = pytest.mark.slow

VEGA_PLOTS = (
    "Loss_per_epoch",
    "Accuracy_per_epoch",
    "Confusion_matrix__test_split_",
    "Model_selection__validation_accuracy_vs_training_seconds_",
)
SELECTION = VEGA_PLOTS[-1]
# Marks are drawn in colour; axes, grid and text in greys: a chart with its data on it has
# hundreds of coloured pixels, an empty one none (the legend's swatches stay well below this).
COLOURED_PIXELS = """(selector) => {
  const canvas = document.querySelector(selector + ' canvas');
  if (!canvas) return -1;
  const {data} = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
    if (a > 128 && Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
  }
  return coloured;
}"""


@pytest.fixture(scope="module")
def project(ran_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(ran_project, tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="module")
def plots_page(project: Path) -> Path:
    """`dvc plots show` as the README says it, in the project: dvc_plots/index.html."""
    dvc("plots", "show", cwd=project)
    return project / "dvc_plots" / "index.html"


@pytest.fixture(scope="module")
def searched_plots_page(project: Path, plots_page: Path) -> Path:
    """The same page once a search has filled reports/selection_trials.csv (train.model: auto;
    the project trained a fixed family, so its file has only the header)."""
    trials = project / "reports" / "selection_trials.csv"
    with trials.open(newline="") as handle:
        header = next(csv.reader(handle))
    with trials.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        for trial in range(12):
            writer.writerow(
                {
                    "trial": trial,
                    "state": "COMPLETE",
                    "model": ("mlp", "cnn", "resnet")[trial % 3],
                    "options": "{}",
                    "val_accuracy": 0.80 + trial / 100,
                    "val_loss": 0.6 - trial / 50,
                    "train_seconds": 2.0 + 3 * trial,
                    "parameters": 1000 * (trial + 1),
                    "epochs": 2,
                }
            )
    dvc("plots", "show", "-o", "searched_plots", cwd=project)
    return project / "searched_plots" / "index.html"


def rendered(offline_page: OfflinePage, page: Path, screenshot: Path) -> dict[str, int]:
    """Open ``page``; per vega plot, the coloured pixels of its canvas once drawn."""
    browser = offline_page.page
    offline_page.goto(page.as_uri())
    for plot in VEGA_PLOTS:
        browser.locator(f"#{plot} canvas, #{plot} .plot-note").first.wait_for(timeout=15_000)
    browser.screenshot(path=str(screenshot), full_page=True)
    return {plot: browser.evaluate(COLOURED_PIXELS, f"#{plot}") for plot in VEGA_PLOTS}


def test_dvc_plots_draw_every_chart_offline(offline_page: OfflinePage, plots_page, tmp_path):
    assert 'src="https://' not in plots_page.read_text()
    coloured = rendered(offline_page, plots_page, tmp_path / "dvc-plots.png")
    for plot in VEGA_PLOTS[:3]:
        assert coloured[plot] > 300, (plot, coloured)
    # no search ran: the scatter has no points, and the page says so where it would be
    note = offline_page.page.locator(f"#{SELECTION} .plot-note")
    assert note.inner_text().endswith("no data points to draw (its data file has no rows)")
    for image in ("reports_confusion_matrix_png", "reports_selection_png"):
        drawn = offline_page.page.locator(f"#{image} img")
        assert drawn.evaluate("img => img.complete && img.naturalWidth > 0"), image
    assert offline_page.blocked == []
    assert offline_page.console_errors == []  # "vegaEmbed is not defined" was one


def test_dvc_plots_draw_the_selection_scatter_once_a_search_ran(
    offline_page: OfflinePage, searched_plots_page, tmp_path
):
    coloured = rendered(offline_page, searched_plots_page, tmp_path / "dvc-plots-searched.png")
    assert all(count > 300 for count in coloured.values()), coloured
    assert offline_page.page.locator(".plot-note").count() == 0
    assert offline_page.blocked == [] and offline_page.console_errors == []


def test_data_docs_index_lists_the_results_styled_and_opens_one(
    offline_page: OfflinePage, project: Path, tmp_path
):
    browser = offline_page.page
    offline_page.goto((project / "reports" / "data_docs" / "index.html").as_uri())
    results = browser.locator("table tbody tr", has_text="UTC")  # one per validation run
    results.first.wait_for(timeout=15_000)
    browser.screenshot(path=str(tmp_path / "data-docs-index.png"), full_page=True)
    suites = {row.inner_text() for row in results.all()}
    assert any("raw_samples" in text for text in suites), suites
    assert any("processed_splits" in text for text in suites), suites
    # bootstrap's stylesheet applies, bootstrap-table's too
    cell = results.first.locator("td").nth(1)  # .table-sm's .3rem; a browser's own is 1px
    assert cell.evaluate("td => getComputedStyle(td).paddingTop") == "4.8px"
    assert browser.locator(".bootstrap-table").count() >= 1
    # each row's status icon is drawn from Font Awesome's font, loaded from the site
    icons = results.locator("i.fas")
    assert icons.count() == results.count()
    box = icons.first.bounding_box()
    assert box is not None and box["width"] > 5 and box["height"] > 5
    assert browser.evaluate(
        "async () => { await document.fonts.ready; return [...document.fonts]"
        ".some(f => f.family.includes('Font Awesome') && f.status === 'loaded'); }"
    )
    assert icons.first.evaluate("i => getComputedStyle(i, '::before').content") not in (
        "none",
        "normal",
        '""',
    )

    results.first.locator("td").nth(1).click()
    browser.wait_for_url(re.compile(r"/validations/.+\.html$"), timeout=15_000)
    browser.get_by_text("Expectation Validation Result").first.wait_for()
    browser.screenshot(path=str(tmp_path / "data-docs-result.png"), full_page=False)
    assert browser.get_by_text("Evaluated Expectations").is_visible()
    assert offline_page.blocked == [] and offline_page.console_errors == []


def test_monitoring_report_has_a_title_and_renders_offline(
    offline_page: OfflinePage, project: Path, tmp_path
):
    batch = tmp_path / "batch.npz"
    shutil.copy(project / "data" / "processed" / "test.npz", batch)
    outcome = mlcycle("monitor", "--batch", str(batch), cwd=project, check=False)
    assert outcome.returncode in (0, 3), outcome.stdout + outcome.stderr  # no drift or drift
    (report,) = sorted((project / "reports" / "monitoring").glob("*.html"))

    browser = offline_page.page
    offline_page.goto(report.as_uri())
    browser.get_by_text("Drift monitoring:").first.wait_for(timeout=15_000)
    browser.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    browser.screenshot(path=str(tmp_path / "drift-report.png"), full_page=False)
    assert re.fullmatch(
        r"Drift report: [\w.-]+ v1, (no drift|drift) \(\d{4}-\d\d-\d\d \d\d:\d\d UTC\)",
        browser.title(),
    ), browser.title()
    assert browser.locator(".js-plotly-plot").count() >= 10  # a chart per feature and more
    assert offline_page.blocked == [] and offline_page.console_errors == []
