"""The MLflow UI (3.17) of a real ``mlflow server``, opened as a person would, with the network
off: the experiment, a registered model and its version, and a pruned selection trial.

One module-wide setup trains a tiny model, registers it (the registry's own steps, as the
pipeline takes them) and runs one selection trial that a pruner stops. What is checked is what
the page shows: the experiment opens on its runs (MLflow opens an experiment without
``mlflow.experimentKind`` in its GenAI view, an empty traces overview), the version's schema
lists its input, the tags a person reads are in view and whole, and a pruned trial says so.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from tasks.core.config import load_params
from tasks.core.tracking import UI_VIEW, run_url, tracked_run
from tests.browser.conftest import SCREENSHOTS
from tests.helpers import REPO_ROOT, TINY_OVERRIDES
from tests.integration.helpers import MlflowService, make_workspace

pytestmark = pytest.mark.slow

# The MLflow UI asks who is signed in; a server without authentication answers 404.
MLFLOW_NO_AUTH = "Failed to load resource: the server responded with a status of 404"
PERSON_TAGS = ("accuracy", "decision", "family", "load_check", "macro_f1")
PERSON_ORDER = ("family", "load_check", "decision", "accuracy", "macro_f1")  # as registered
LOAD_S = 30_000  # ms: the first page load compiles MLflow's bundle on a busy machine


@dataclass(frozen=True)
class Tracked:
    uri: str
    experiment_id: str
    model: str
    version: str
    run_id: str  # the run the version was registered from
    run_link: str  # the link to it that mlcycle prints
    trial_run_id: str  # a selection trial that was pruned


@pytest.fixture(scope="module")
def tracked(
    mlflow_service: MlflowService,
    prefect_server: str,
    processed_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Tracked]:
    """A registered champion and a pruned trial on the server, in an experiment of their own."""
    import optuna

    from tasks.stages.select import trial_data
    from tasks.training.search import run_search

    root = tmp_path_factory.mktemp("mlflow-ui")
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_service.uri
    os.environ["MLFLOW_EXPERIMENT_NAME"] = f"ui-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(mlflow_service.uri)
    os.chdir(root)
    try:
        params = load_params(
            REPO_ROOT / "params.yaml",
            overrides=[
                *TINY_OVERRIDES,
                "select.candidates={cnn: {channels: [4, 8], hidden_size: 16}}",
                "select.max_trials=1",
                "select.epochs=2",
            ],
        )
        processed = processed_template / "data" / "processed"  # the session's tiny splits
        name = f"ui-{uuid.uuid4().hex[:8]}"
        workspace = make_workspace(root / "ws", processed, params, name, prefect_server)
        candidate = workspace.train(seed=1)
        registration = workspace.register(candidate)
        assert registration.promoted, registration.reason
        # a pruner that stops every trial after its first epoch: the trial's run must say so
        study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
        with tracked_run(params, run_name="select") as parent:
            run_search(study, params, trial_data(processed), parent.run_id)
        client = mlflow.MlflowClient()
        experiment_id = client.get_run(parent.run_id).info.experiment_id
        (trial,) = client.search_runs(
            [experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'"
        )
        yield Tracked(
            mlflow_service.uri,
            experiment_id,
            registration.name,
            registration.version,
            candidate.run_id,
            run_url(candidate.run_id),
            trial.info.run_id,
        )
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        mlflow.set_tracking_uri(None)


def screenshot(offline_page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    offline_page.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def assert_clean(offline_page) -> None:
    """Nothing left the machine, and the browser reported nothing but MLflow's own 404."""
    assert offline_page.blocked == []
    assert [e for e in offline_page.console_errors if MLFLOW_NO_AUTH not in e] == []


def test_the_experiment_opens_on_its_runs_not_an_empty_genai_overview(tracked, offline_page):
    """What the link mlcycle prints opens: the run, in the UI's model-training view; its
    experiment shows the runs table (MLflow 3.17 opens a new browser in its GenAI view, an
    empty traces overview, unless the link or the UI's switch says otherwise)."""
    page = offline_page.page
    offline_page.goto(tracked.run_link)
    page.get_by_role("tab", name="Model metrics").wait_for(timeout=LOAD_S)
    assert page.get_by_text("seed-1").first.is_visible()
    offline_page.goto(f"{tracked.uri}/#/experiments/{tracked.experiment_id}?{UI_VIEW}")
    page.get_by_role("link", name="seed-1").wait_for(timeout=LOAD_S)  # the runs table
    assert page.get_by_role("link", name="select").is_visible()
    screenshot(offline_page, "mlflow-experiment")
    text = page.inner_text("body")
    assert "No data available for the selected time range" not in text  # GenAI's overview
    assert "Detect Issues" not in text
    assert_clean(offline_page)


def test_the_version_shows_its_input_schema_and_the_tags_a_person_reads(tracked, offline_page):
    page = offline_page.page
    offline_page.goto(f"{tracked.uri}/#/models/{tracked.model}/versions/{tracked.version}")
    page.get_by_text("Schema", exact=True).wait_for(timeout=LOAD_S)
    assert page.get_by_text("Inputs (1)").is_visible()  # was "Inputs (0)": no signature
    if not page.get_by_text("dtype: uint8").is_visible():
        page.get_by_text("Inputs (1)").click()
    # the image tensor, as the model takes it: a batch of 8x8x1 uint8 images
    assert page.get_by_text("Tensor (dtype: uint8, shape: [-1,8,8,1])").is_visible()
    screenshot(offline_page, "mlflow-model-version")
    box = _tag_table_box(page)  # a scroll box about five rows high, sorted by name
    for name in PERSON_TAGS:
        cell = page.get_by_role("cell", name=name, exact=True)
        assert _inside(_text_box(cell), box), f"tag {name} is scrolled out of view"
    row_text = {name: _tag_value(page, name) for name in PERSON_TAGS}
    assert row_text["load_check"] == "passed"
    assert row_text["decision"] == "promoted to champion"
    assert row_text["family"] == "cnn"
    assert 0 <= float(row_text["accuracy"]) <= 1
    assert page.get_by_text("mlcycle.params").count() == 0  # the params stay on the run
    assert_clean(offline_page)


def test_the_model_lists_its_versions_with_whole_tag_chips(tracked, offline_page):
    page = offline_page.page
    offline_page.goto(f"{tracked.uri}/#/models/{tracked.model}")
    page.get_by_role("link", name=f"Version {tracked.version}").wait_for(timeout=LOAD_S)
    close_assistant(page)
    screenshot(offline_page, "mlflow-model-versions")
    chips = page.locator("[role=status][title]").filter(has_text=":")  # tag chips: "key: value"
    shown = [chip.get_attribute("title") for chip in chips.all()]
    assert shown[: len(PERSON_TAGS)] == list(PERSON_ORDER)  # the ones a person reads first
    assert len(shown) <= len(PERSON_TAGS) + 3  # and the run and identity ones: was 15
    for name in PERSON_TAGS:
        chip = chips.and_(page.locator(f'[title="{name}"]'))
        assert chip.is_visible(), name
        assert not _clipped(chip), f"the {name} chip is cut off: {chip.inner_text()!r}"
    assert_clean(offline_page)


def test_a_pruned_trial_says_it_was_pruned(tracked, offline_page):
    page = offline_page.page
    experiment = f"{tracked.uri}/#/experiments/{tracked.experiment_id}"
    offline_page.goto(f"{experiment}/runs/{tracked.trial_run_id}?{UI_VIEW}")
    page.get_by_text("trial-000-cnn-pruned").first.wait_for(timeout=LOAD_S)
    page.get_by_text("Pruned: Optuna's ThresholdPruner stopped trial 0").wait_for()
    screenshot(offline_page, "mlflow-pruned-trial")
    text = page.inner_text("body")
    assert "Killed" in text and "Finished" not in text
    assert_clean(offline_page)


def close_assistant(page) -> None:
    """Close the "MLflow Assistant" panel that MLflow opens on a browser's first visit (a
    person closes it once; the browser remembers): it takes a third of a 1400-pixel window."""
    close = page.get_by_role("button", name="Close", exact=True)
    close.wait_for(timeout=LOAD_S)
    close.click()
    close.wait_for(state="hidden")


def _tag_table_box(page) -> dict:
    """The visible part of the version's tag table (a scroll box about five rows high)."""
    body = page.locator(".du-bois-light-table-body").filter(has_text="load_check").first
    return body.bounding_box()


def _text_box(element) -> dict:
    """Where the text of ``element`` is drawn (not its padding)."""
    return element.evaluate(
        """e => { const range = document.createRange(); range.selectNodeContents(e);
                  const b = range.getBoundingClientRect();
                  return {x: b.x, y: b.y, width: b.width, height: b.height}; }"""
    )


def _tag_value(page, name: str) -> str:
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))
    return row.get_by_role("cell").nth(1).inner_text().strip()


def _inside(inner: dict | None, outer: dict | None) -> bool:
    if inner is None or outer is None:
        return False
    return (
        inner["y"] >= outer["y"] - 1
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 1
        and inner["x"] >= outer["x"] - 1
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 1
    )


def _clipped(chip) -> bool:
    """Whether ``chip`` shows less than its text: an ellipsis inside it, or a right edge past
    the table cell that clips it."""
    return chip.evaluate(
        """chip => {
            const cell = chip.closest('.du-bois-light-typography-ellipsis, [role=cell], td');
            const edge = (cell || chip.parentElement).getBoundingClientRect().right;
            return [chip, ...chip.querySelectorAll('*')].some(e =>
                e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().right > edge + 1);
        }"""
    )
