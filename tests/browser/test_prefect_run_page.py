"""The flow-run page of a real ``training-pipeline`` run in Prefect's UI, with the network off.

A real ``prefect server start`` with its UI, one ``mlcycle run`` of a copy of the project
against it (tiny params), and the run's page opened as a person would: the Task Runs tab lists
every task run by name (Prefect 3.8's UI listed none when a task had recorded a subflow's result
as an input), and the run's own Artifacts tab shows the data-validation verdicts with their
counts and the model registration (which used to show only on the register-model subflow).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tasks.stages import DATA_STAGES
from tests.browser.conftest import SCREENSHOTS
from tests.integration.helpers import BIN, PrefectServer, copy_project, run

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# What the pipeline's task runs are called (Prefect adds a suffix to the untemplated ones).
TASK_RUNS = (
    "find-unregistered-run",
    "apply-params",
    "start-mlflow-run",
    *(f"dvc-repro-{stage}" for stage in DATA_STAGES),
    "dvc-push",
    "finish-mlflow-run",
    "deploy",
)
# Prefect's own UI asks for a favicon and a state icon it does not ship: not ours to fix.
PREFECT_MISSING_ICON = "Failed to load resource: the server responded with a status of 404"


@dataclass(frozen=True)
class PipelineRun:
    page_url: str  # the flow run's page in the UI (the one `mlcycle run` points at)
    project: Path


@pytest.fixture(scope="module")
def server(prefect_service: PrefectServer) -> PrefectServer:
    """The session's Prefect server, with its UI (told where its API is: another port than
    4200)."""
    return prefect_service


def run_pipeline(server: PrefectServer, project: Path) -> PipelineRun:
    """`mlcycle run` in ``project``, tracked by ``server``; its flow run's page."""
    env = {"PREFECT_API_URL": server.url, "PREFECT_HOME": str(server.root)}
    run([str(BIN / "mlcycle"), "run"], cwd=project, timeout=900, **env)
    query = {
        "flows": {"name": {"any_": ["training-pipeline"]}},
        "sort": "START_TIME_DESC",
        "limit": 1,
    }
    (newest,) = httpx.post(f"{server.url}/flow_runs/filter", json=query).json()
    return PipelineRun(f"http://127.0.0.1:{server.port}/runs/flow-run/{newest['id']}", project)


@pytest.fixture(scope="module")
def pipeline_run(
    server: PrefectServer, project_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> PipelineRun:
    """The first run of a fresh copy of the project: every stage runs."""
    return run_pipeline(server, copy_project(project_template, tmp_path_factory.mktemp("run")))


@pytest.fixture(scope="module")
def unchanged_run(server: PrefectServer, pipeline_run: PipelineRun) -> PipelineRun:
    """The same project run again: DVC skips every stage, both validation stages included."""
    return run_pipeline(server, pipeline_run.project)


def open_tab(offline_page, url: str, tab: str, shows: str) -> str:
    """Open the run's page, then its ``tab``; wait until it ``shows`` a text (a regex); the
    page's text."""
    page = offline_page.page
    offline_page.goto(url)
    page.get_by_text("Task Runs", exact=True).first.wait_for(timeout=60_000)
    page.get_by_text(tab, exact=True).first.click()
    page.get_by_text(re.compile(shows)).first.wait_for(timeout=30_000)
    page.wait_for_load_state("networkidle")
    return page.locator("body").inner_text()


def screenshot(offline_page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    offline_page.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def assert_clean(offline_page) -> None:
    """Nothing left the machine, and the browser reported nothing but Prefect's missing icons."""
    assert not offline_page.blocked, offline_page.blocked
    ours = [e for e in offline_page.console_errors if not e.startswith(PREFECT_MISSING_ICON)]
    assert not ours, ours


def test_the_task_runs_tab_lists_every_task_run(offline_page, pipeline_run):
    text = open_tab(
        offline_page, pipeline_run.page_url, "Task Runs", "dvc-repro-collect|No task runs"
    )
    screenshot(offline_page, "prefect_run_page_task_runs")
    assert "No task runs" not in text
    listed = {line.strip() for line in text.splitlines()}
    missing = [
        name for name in TASK_RUNS if not any(re.fullmatch(rf"{name}(-\w+)?", s) for s in listed)
    ]
    assert not missing, f"not listed: {missing}\n{text}"
    header = re.search(r"(\d+) Task runs", text)
    assert header and int(header.group(1)) >= len(TASK_RUNS), text
    assert not [e for e in offline_page.console_errors if "Invalid" in e]
    assert_clean(offline_page)


def test_no_task_run_records_an_input_the_ui_cannot_read(server, pipeline_run):
    """The cause, for every run (the register-model subflow's page too): Prefect 3.8's UI
    reads task inputs of kind task_run, parameter and constant only; one flow_run input (a
    subflow's result passed to a task) empties a run's whole Task Runs tab."""
    task_runs = httpx.post(f"{server.url}/task_runs/filter", json={"limit": 200}).json()
    assert len(task_runs) > len(TASK_RUNS)
    unreadable = [
        (task_run["name"], name)
        for task_run in task_runs
        for name, inputs in task_run["task_inputs"].items()
        if any(given["input_type"] not in ("task_run", "parameter", "constant") for given in inputs)
    ]
    assert not unreadable


def test_the_runs_artifacts_tab_shows_validation_counts_and_the_registration(
    offline_page, pipeline_run
):
    text = open_tab(offline_page, pipeline_run.page_url, "Artifacts", "data-validation")
    screenshot(offline_page, "prefect_run_page_artifacts")
    cards = [line.strip() for line in text.splitlines() if line.strip()]
    for key in ("data-validation", "model-registration", "evaluation"):
        assert cards.count(key) == 1, f"{key} shown {cards.count(key)} times on the run's page"
    # the registration is the flow run's own artifact (its section no longer says "None")
    own = cards[cards.index("Flow run") + 1 : cards.index("Task runs")]
    assert "model-registration" in own, own

    page = offline_page.page
    page.get_by_text("data-validation", exact=True).first.click()
    page.get_by_text("Data Docs").first.wait_for(timeout=30_000)
    screenshot(offline_page, "prefect_run_page_data_validation")
    shown = page.locator("body").inner_text()
    counts = re.findall(
        r"(raw_samples|processed_splits): passed (\d+) of (\d+) expectations", shown
    )
    assert [suite for suite, _, _ in counts] == ["raw_samples", "processed_splits"], shown
    assert all(passed == total for _, passed, total in counts), counts
    docs = pipeline_run.project / "reports" / "data_docs" / "index.html"
    link = page.get_by_role("link", name=str(docs.resolve()))
    assert link.get_attribute("href") == docs.resolve().as_uri()
    assert docs.is_file()

    open_tab(offline_page, pipeline_run.page_url, "Artifacts", "model-registration")
    page.get_by_text("model-registration", exact=True).first.click()
    page.get_by_text("promoted to champion").first.wait_for(timeout=30_000)
    screenshot(offline_page, "prefect_run_page_model_registration")
    assert "Model registry: mlcycle-classifier v1" in page.locator("body").inner_text()
    assert_clean(offline_page)


def test_a_run_that_skipped_validation_shows_its_artifact_once(offline_page, unchanged_run):
    text = open_tab(offline_page, unchanged_run.page_url, "Artifacts", "data-validation")
    screenshot(offline_page, "prefect_run_page_artifacts_unchanged")
    cards = [line.strip() for line in text.splitlines()]
    assert cards.count("data-validation") == 1, text
    assert_clean(offline_page)
