"""The Custom run form of training-pipeline/scheduled in Prefect's UI, with the network off.

A real ``prefect server start`` with its UI, the project's deployments applied by
``mlcycle deployments apply`` in a copy of the project, and the deployment's Run > Custom run
page opened as a person would, in both of Prefect 3.8's UIs (V2, where the server's front page
leads; V1, where a deployment's old-style link leads): the model family and the device are
choices, no null field shows a stray 'Property is type "None"', and ``select.candidates`` is
fields per family (a fixed value, a range or choices per option), not one raw JSON editor.
A run submitted from the form changes only the lines of params.yaml a person changed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.core.config import AUTO, DEVICE_CHOICES, MODEL_NAMES, Params, apply_params
from tests.browser.conftest import SCREENSHOTS
from tests.integration.helpers import PrefectServer, copy_project, mlcycle

pytestmark = pytest.mark.slow

TRAINING = "training-pipeline/scheduled"
NULL_TAB = 'Property is type "None"'
# Prefect's V2 UI starts its analytics library on every page load, analytics off or not
# (PREFECT_SERVER_ANALYTICS_ENABLED=false only stops the events), and the library asks this
# host for its remote configuration: the one request beyond this machine, and Prefect's own.
AMPLITUDE_CONFIG = "https://sr-client-cfg.amplitude.com/config/"
BLOCKED_ERROR = "net::ERR_INTERNET_DISCONNECTED"  # how Chromium logs a refused request
JSON_EDITORS = ".cm-editor, .json-input, .p-code-input"  # V2's CodeMirror, V1's JSON input


@dataclass(frozen=True)
class Deployed:
    server: PrefectServer
    deployment_id: str
    checkout: Path

    def custom_run(self, ui: str) -> str:
        prefix = "/v2" if ui == "v2" else ""
        return f"http://127.0.0.1:{self.server.port}{prefix}/deployments/deployment/{self.deployment_id}/run"


@pytest.fixture(scope="module")
def deployed(
    project_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    """A Prefect server with its UI (told where its API is: another port than 4200) and the
    project's deployments, as `make deploy` registers them."""
    from prefect.client.orchestration import SyncPrefectClient

    # The scheduler off: no test here needs a scheduled run, and its inserts of the
    # deployments' next 100 runs are the largest writes beside the form's. A write landing
    # between the reads and the write of 'create flow run' makes SQLite answer SQLITE_BUSY at
    # once (a stale snapshot gets no busy wait); the server turns that into a 503, which
    # Prefect's Python client retries and the UI shows as 'Unknown error while creating flow
    # run' (CI saw it once, under load).
    server = PrefectServer(
        tmp_path_factory.mktemp("form-server"), PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false"
    )
    server.server_settings.update(PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL=server.url)
    server.start()
    try:
        checkout = copy_project(project_template, tmp_path_factory.mktemp("form-checkout"))
        env = {"PREFECT_API_URL": server.url, "PREFECT_HOME": str(server.root)}
        mlcycle("deployments", "apply", cwd=checkout, **env)
        with SyncPrefectClient(server.url) as client:
            deployment = client.read_deployment_by_name(TRAINING)
        yield Deployed(server, str(deployment.id), checkout)
    finally:
        server.stop()


def open_form(offline_page, url: str, first_field) -> None:
    offline_page.goto(url)
    first_field.wait_for(timeout=90_000)
    offline_page.page.wait_for_load_state("networkidle")


def screenshot_at(page, text: str, name: str) -> None:
    """The viewport around ``text`` (the form scrolls for ~30,000 px: a full page is no use)."""
    page.get_by_text(text, exact=True).first.scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))


def v2_choices(page, title: str) -> list[str]:
    """The options a V2 select lists when opened (closed again after)."""
    page.get_by_role("button", name=f"Select {title}", exact=True).click()
    listed = [text.strip() for text in page.get_by_role("option").all_inner_texts()]
    page.keyboard.press("Escape")
    return listed


def test_the_v2_form_offers_choices_and_fields_and_no_null_tabs(offline_page, deployed):
    page = offline_page.page
    model = page.get_by_role("button", name="Select model", exact=True)
    open_form(offline_page, deployed.custom_run("v2"), model)
    screenshot_at(page, "train", "prefect_custom_run_v2_train.png")

    # train.model and train.device: selects, on the values params.yaml holds
    assert model.inner_text().strip() == "cnn"
    assert v2_choices(page, "model") == [AUTO, *MODEL_NAMES]
    device = page.get_by_role("button", name="Select device", exact=True)
    assert device.inner_text().strip() == "cpu"
    assert v2_choices(page, "device") == list(DEVICE_CHOICES)
    # null fields: empty optional inputs, no tab reading 'Property is type "None"'
    body = page.locator("body").inner_text()
    assert NULL_TAB not in body
    assert "image_size (Optional)" in body
    # the search space: an option per family with its fixed / range / choices tabs
    screenshot_at(page, "candidates", "prefect_custom_run_v2_candidates.png")
    assert page.locator(JSON_EDITORS).count() == 0, "a raw JSON editor is on the form"
    for tab in ("fixed", "range", "choices"):
        assert page.get_by_role("tab", name=tab, exact=True).count() > 10, tab
    assert page.get_by_role("tab", name="range", selected=True).count() >= 8  # the YAML's

    outside = [url for url in offline_page.blocked if not url.startswith(AMPLITUDE_CONFIG)]
    assert not outside, outside
    errors = [e for e in offline_page.console_errors if BLOCKED_ERROR not in e]
    assert not errors, errors


def test_a_run_submitted_from_the_form_changes_only_those_lines(offline_page, deployed, tmp_path):
    """Choose another model family and type another epoch count, Submit: the full params the
    run receives change exactly those two lines of params.yaml (the search space the form
    sent back, untouched, leaves its lines alone)."""
    from prefect.client.orchestration import SyncPrefectClient

    page = offline_page.page
    model = page.get_by_role("button", name="Select model", exact=True)
    open_form(offline_page, deployed.custom_run("v2"), model)
    model.click()
    page.get_by_role("option", name="mlp", exact=True).click()
    page.get_by_label("epochs", exact=True).first.fill("5")  # train's (select's is below)
    run_name = page.get_by_label("Run Name", exact=True).input_value()
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url("**/deployments/deployment/**tab=Runs", timeout=60_000)

    with SyncPrefectClient(deployed.server.url) as client:
        [run] = [r for r in client.read_flow_runs() if r.name == run_name]
    sent = run.parameters["params"]
    params_file = tmp_path / "params.yaml"
    shutil.copy(deployed.checkout / "params.yaml", params_file)
    before = params_file.read_text()
    apply_params(Params.model_validate(sent), params_file)
    changed = [
        (old.split("#")[0].strip(), new.split("#")[0].strip())
        for old, new in zip(before.splitlines(), params_file.read_text().splitlines(), strict=True)
        if old != new
    ]
    assert changed == [("model: cnn", "model: mlp"), ("epochs: 2", "epochs: 5")]


def test_the_v1_form_offers_choices_and_fields_and_no_null_tabs(offline_page, deployed):
    page = offline_page.page
    model_label = page.locator("span.schema-form-property__label", has_text="model").first
    open_form(offline_page, deployed.custom_run("v1"), model_label)
    screenshot_at(page, "train", "prefect_custom_run_v1_train.png")

    def control(label: str):
        """The input of the field labelled ``label`` (the first such, train's)."""
        span = page.locator("span.schema-form-property__label").filter(has_text=label)
        field = span.first.locator("xpath=ancestor::div[contains(@class, 'p-label ')][1]")
        return field.locator(".p-label__body").first

    for label, value in (("model", "cnn"), ("device", "cpu")):
        select = control(label).locator(".p-select")
        assert select.count() == 1, f"train.{label} is no select"
        assert select.inner_text().strip() == value
    body = page.locator("body").inner_text()
    assert NULL_TAB not in body
    assert page.locator(JSON_EDITORS).count() == 0, "a raw JSON editor is on the form"
    assert page.get_by_text("range", exact=True).count() > 10
    assert not offline_page.blocked, offline_page.blocked
    assert not offline_page.console_errors, offline_page.console_errors
