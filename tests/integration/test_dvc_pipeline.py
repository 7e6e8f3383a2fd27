"""`dvc repro`, `dvc exp run`, `dvc metrics show` and `dvc plots show` on a real DVC repo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tasks.core.config import load_params
from tasks.core.files import read_split
from tasks.core.lineage import TAG_EVALUATED, TAG_MODEL_MD5
from tests.integration.helpers import copy_project, dvc, mlcycle, run

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
STAGES = ("collect", "validate", "preprocess", "select", "train", "evaluate")


@pytest.fixture(scope="module")
def reproduced(
    dvc_reproduction: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """This module's copy of the session's `dvc repro` (the tests here register from it and
    re-run stages in it; test_flow reads the original meanwhile)."""
    return copy_project(dvc_reproduction[0], tmp_path_factory.mktemp("repro"))


def test_repro_runs_every_stage(reproduced_output: str):
    for stage in STAGES:
        assert f"Running stage '{stage}'" in reproduced_output


def test_repro_writes_every_output(reproduced: Path):
    for path in (
        "data/raw/images.npy",
        "data/raw/meta.json",
        "data/validated/images.npy",
        "reports/validation_raw.json",
        "reports/validation_processed.json",
        "reports/data_docs/index.html",
        "data/processed/train.npz",
        "artifacts/model.pt",
        "artifacts/checkpoints/last.pt",
        "reports/metrics.json",
        "reports/confusion_matrix.png",
        "reports/training_history.csv",
    ):
        assert (reproduced / path).is_file(), path


def test_second_repro_has_nothing_to_do(reproduced: Path):
    output = dvc("repro", cwd=reproduced).stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in output
    assert "Running stage" not in output
    assert "up to date" in dvc("status", cwd=reproduced).stdout


def test_repro_tracks_one_mlflow_run_in_the_default_sqlite_store(reproduced: Path):
    assert (reproduced / "mlflow.db").is_file() and (reproduced / "mlartifacts").is_dir()
    mlflow.set_tracking_uri(f"sqlite:///{reproduced / 'mlflow.db'}")
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("mlcycle").experiment_id]
    )
    assert len(runs) == 1  # train opened it, evaluate joined it through the model's hash
    run = runs[0]
    metrics = json.loads((reproduced / "reports" / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert run.data.tags[TAG_EVALUATED] == "true" and TAG_MODEL_MD5 in run.data.tags
    assert run.data.tags["mlcycle.dvc.data/raw"].endswith(".dir")
    # The train stage records what validation said about the data the model learned from.
    assert run.data.metrics["validation_success"] == 1.0
    assert run.data.metrics["split_validation_success"] == 1.0


def test_register_after_dvc_repro_registers_once_and_lists_the_version(reproduced: Path):
    """`mlcycle register` for people who ran `dvc repro`; a second call registers nothing new."""
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{reproduced / 'mlflow.db'}"}
    first = mlcycle("register", cwd=reproduced, **store).stdout
    assert "registered: mlcycle-classifier version 1, promoted to champion: first champion" in first
    again = mlcycle("register", cwd=reproduced, **store).stdout
    assert "version 1, not promoted: version 1 is already the champion" in again
    listing = mlcycle("models", cwd=reproduced, **store).stdout
    assert "challenger,champion" in listing
    assert len([line for line in listing.splitlines() if "passed" in line]) == 1
    # its data went to the DVC remote, so `mlcycle restore` can bring it back elsewhere
    assert "in sync" in dvc("status", "--cloud", cwd=reproduced).stdout


def test_metrics_show_reports_accuracy_and_baseline(reproduced: Path):
    shown = json.loads(dvc("metrics", "show", "--json", cwd=reproduced).stdout)
    metrics = next(iter(shown.values()))["data"]["reports/metrics.json"]["data"]
    # the accuracy of the test split's predictions, one row per image in reports/confusion.csv
    rows = (reproduced / "reports" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted"
    pairs = [row.split(",") for row in rows[1:]]
    test, _ = read_split(reproduced / "data" / "processed", "test")
    assert len(pairs) == len(test.labels)
    right = sum(actual == predicted for actual, predicted in pairs)
    assert metrics["accuracy"] == round(right / len(pairs), 6)
    assert "macro_f1" in metrics
    assert metrics["baseline"]["model"] == "logistic_regression"


def test_plots_show_renders_curves_and_confusion_matrix(reproduced: Path, tmp_path: Path):
    dvc("plots", "show", "-o", str(tmp_path / "plots"), cwd=reproduced)
    page = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Loss per epoch", "Accuracy per epoch", "Confusion matrix (test split)"):
        assert title in page
    assert "confusion_matrix.png" in page


def test_exp_run_with_a_param_override_and_the_workspace_restored_after(
    reproduced: Path, tmp_path: Path
):
    project = tmp_path / "project"
    shutil.copytree(reproduced, project, symlinks=True)
    run(["git", "add", "dvc.lock"], cwd=project)
    run(["git", "commit", "-qm", "a reproduced pipeline"], cwd=project)
    output = dvc("exp", "run", "-S", "train.lr=0.01", cwd=project).stdout
    assert "Running stage 'train'" in output
    assert "Running stage 'collect'" not in output  # the data stages did not change
    shown = json.loads(dvc("exp", "show", "--json", cwd=project).stdout)
    experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])]
    lrs = [
        rev["data"]["params"]["params.yaml"]["data"]["train"]["lr"]
        for exp in experiments
        for rev in exp["revs"]
    ]
    assert 0.01 in lrs

    # the README's way back: nothing stale afterwards (an uncached checkpoints output once was)
    run(["git", "checkout", "params.yaml", "dvc.lock"], cwd=project)
    dvc("checkout", "-q", cwd=project)
    assert "Data and pipelines are up to date." in dvc("status", cwd=project).stdout
    again = dvc("repro", cwd=project).stdout
    assert "Running stage" not in again


def test_another_familys_option_reruns_select_only(reproduced: Path):
    """train.mlp.* changes what select reads, not the CNN it chose: select re-runs, writes the
    same selection.json, and DVC leaves train and evaluate alone."""
    params = reproduced / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("    dropout: 0.2\n", "    dropout: 0.3\n", 1))
        assert load_params(params).train.mlp.dropout == 0.3
        output = dvc("repro", cwd=reproduced).stdout
        assert "Running stage 'select'" in output
        for stage in ("train", "evaluate"):
            assert f"Stage '{stage}' didn't change, skipping" in output
    finally:
        params.write_text(original)
        dvc("repro", cwd=reproduced)
