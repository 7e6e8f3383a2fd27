"""The Prefect flow through the `mlcycle` CLI, against a real `mlflow server`.

Proves the architecture's invariants: same outputs as `dvc repro`; `dvc status` clean after a
flow run; a re-run with nothing changed skips every stage; every run records data hashes, the
git commit, the flow-run id and the params.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tasks.core.config import load_params
from tasks.core.dvc import data_versions
from tasks.core.lineage import (
    TAG_FLOW_RUN,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_MODEL_MD5,
    TAG_MODEL_RUN,
    TAG_PARAMS,
)
from tasks.core.tracking import get_model_version
from tests.helpers import free_port
from tests.integration.helpers import dvc, mlcycle, mlcycle_within_seconds, prefect_artifacts

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
REGISTERED = re.compile(r"registered: mlcycle-classifier version (\d+), promoted to champion")
RUN_ID = re.compile(r"MLflow run: http://\S+/runs/([0-9a-f]{32})")


def run_id_of(output: str) -> str:
    match = RUN_ID.search(output)
    assert match, f"no MLflow run link in the summary:\n{output[-2000:]}"
    return match.group(1)


def lock_outputs(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


@pytest.fixture(scope="module", autouse=True)
def client_points_at_the_server(mlflow_server: str):
    """This module's MLflow client calls go to the server; the URI does not leak further
    (set_tracking_uri also exports MLFLOW_TRACKING_URI to every later subprocess)."""
    mlflow.set_tracking_uri(mlflow_server)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def flow_project(
    project_template: Path, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    project = tmp_path_factory.mktemp("flow") / "project"
    shutil.copytree(project_template, project, symlinks=True)
    result = mlcycle("run", cwd=project, MLFLOW_TRACKING_URI=mlflow_server)
    return project, result.stdout + result.stderr


def test_flow_prints_progress_and_a_summary(flow_project):
    _, output = flow_project
    for stage in ("collect", "validate", "preprocess", "select", "train", "evaluate"):
        assert f"Task run 'dvc-repro-{stage}'" in output
    assert "validate: 1797 samples passed" in output
    assert "train: epoch 1/2" in output and "train: epoch 2/2" in output
    assert "training-pipeline finished: cnn test accuracy" in output
    assert (
        "stages run: collect, validate, preprocess, select, train, evaluate; unchanged, "
        "skipped: none" in output
    )
    assert "dvc metrics show" in output and "make prefect-ui" in output
    # the temporary Prefect server stops with the command: no dead link to it, one to the
    # flow run's page in the UI of make prefect-ui (same database) instead
    assert "View at http://127.0.0.1" not in output
    assert re.search(
        r"Prefect flow run: http://127.0.0.1:4200/runs/flow-run/[0-9a-f-]{36}\n", output
    )
    assert REGISTERED.search(output), output[-3000:]
    # no serving app runs here: the deploy step says where one would pick the model up
    assert re.search(r"deploy: no serving app at http://127.0.0.1:\d+; `mlcycle serve`", output)


def champion_of(output: str) -> str:
    return REGISTERED.search(output).group(1)


def test_the_flow_registers_a_champion_that_carries_its_lineage(flow_project):
    project, output = flow_project
    client = MlflowClient()
    run = client.get_run(run_id_of(output))
    version = client.get_model_version("mlcycle-classifier", champion_of(output))
    own = version.tags  # the tags a person reads; its lineage stays on the run
    assert own["load_check"] == "passed" and own["family"] in {"mlp", "cnn"}
    assert float(own["accuracy"]) == pytest.approx(run.data.metrics["test_accuracy"], abs=5e-5)
    assert own["mlcycle.mlflow_run_id"] == run.info.run_id
    assert "mlcycle.params" not in own and "mlcycle.dvc.data/raw" not in own
    tags = get_model_version(version.name, version.version).tags  # read with its lineage
    for key in (TAG_GIT_COMMIT, TAG_GIT_DIRTY, TAG_FLOW_RUN, "mlcycle.dvc.data/raw"):
        assert tags[key] == run.data.tags[key], key
    assert tags["mlcycle.dvc.data/processed"] == data_versions(project)["data/processed"]
    assert json.loads(tags["mlcycle.params"]) == run.data.params
    assert run.data.tags["mlcycle.reason"] == "by hand"  # `mlcycle run`: nobody said why
    assert set(version.aliases) == {"champion", "challenger"}
    assert version.description.startswith("Promoted to champion: first champion")
    lineage = {a.path for a in client.list_artifacts(run.info.run_id, "lineage")}
    assert lineage == {"lineage/dvc.lock", "lineage/params.yaml"}
    registration = prefect_artifacts(project)["model-registration"]
    assert f"Version {version.version} promoted to **champion**" in registration


def test_restore_in_a_fresh_clone_brings_back_the_data_and_retraining_reproduces_it(
    flow_project, tmp_path
):
    project, output = flow_project
    version = champion_of(output)
    tags = get_model_version("mlcycle-classifier", version).tags  # with its run's lineage
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    server = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    # With the clone's own (empty) remote the pull fails, and the clone is left as it was.
    params_before = (clone / "params.yaml").read_text()
    failed = mlcycle("restore", version, cwd=clone, check=False, **server)
    assert failed.returncode == 1 and "dvc pull failed" in failed.stderr
    assert (clone / "params.yaml").read_text() == params_before
    assert not (clone / "dvc.lock").exists()
    # A team points every clone at one shared remote; here, the first project's.
    dvc("remote", "modify", "--local", "local", "url", str(project / ".dvcstore"), cwd=clone)

    restored = mlcycle("restore", version, cwd=clone, **server).stdout
    for path in ("data/raw", "data/processed"):
        assert f"{path}: {tags[f'mlcycle.dvc.{path}']} (verified)" in restored
    assert "git checkout" not in restored  # the clone is at the commit the version was trained at
    assert data_versions(clone) == data_versions(project)

    dvc("repro", "--force", "--single-item", "train", cwd=clone, **server)
    dvc("repro", "evaluate", cwd=clone, **server)
    retrained = json.loads((clone / "reports" / "metrics.json").read_text())
    assert retrained["accuracy"] == pytest.approx(float(tags["accuracy"]), abs=1e-3)


def test_mlflow_run_holds_params_epochs_metrics_lineage_and_model(flow_project):
    project, output = flow_project
    client = MlflowClient()
    run = client.get_run(run_id_of(output))
    assert run.info.status == "FINISHED"
    params = load_params(project / "params.yaml")
    assert run.data.params == {key: str(value) for key, value in params.flat().items()}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    assert {"test_accuracy", "test_macro_f1", "baseline_accuracy"} <= set(run.data.metrics)
    assert run.data.metrics["validation_success"] == 1.0
    assert run.data.metrics["split_validation_success"] == 1.0
    tags = run.data.tags
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tags[TAG_GIT_COMMIT] == head and tags[TAG_GIT_DIRTY] == "false"
    versions = data_versions(project)
    assert set(versions) == {"data/raw", "data/processed"}
    for path, md5 in versions.items():
        assert tags[f"mlcycle.dvc.{path}"] == md5
    uuid.UUID(tags[TAG_FLOW_RUN])  # the Prefect flow-run id
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts
    validation = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert validation == {"validation/validation_raw.json", "validation/validation_processed.json"}
    model = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )[0]
    pyfunc = mlflow.pyfunc.load_model(model.model_uri)
    predictions = np.asarray(pyfunc.predict(np.zeros((3, 8, 8, 1), np.uint8)))  # its signature
    assert predictions.shape == (3, 10)


def test_dvc_status_is_clean_after_a_flow_run(flow_project):
    project, _ = flow_project
    assert "Data and pipelines are up to date" in dvc("status", cwd=project).stdout


def test_flow_and_dvc_repro_give_the_same_outputs(flow_project, reproduced):
    project, _ = flow_project
    assert lock_outputs(reproduced) == lock_outputs(project)  # `dvc repro` in another copy


def test_data_is_pushed_to_the_dvc_remote(flow_project):
    project, _ = flow_project
    output = dvc("status", "--cloud", cwd=project).stdout
    assert "Cache and remote 'local' are in sync" in output


def test_rerun_with_nothing_changed_skips_every_stage(flow_project):
    project, first_output = flow_project
    first_run = run_id_of(first_output)
    result = mlcycle("run", cwd=project, MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    output = result.stdout + result.stderr
    assert (
        "stages run: none; unchanged, skipped: collect, validate, preprocess, select, train, "
        "evaluate" in output
    )
    for stage in ("collect", "validate", "preprocess", "select", "train", "evaluate"):
        assert f"stage '{stage}' is up to date: skipped" in output
    run = MlflowClient().get_run(run_id_of(output))
    assert run.info.run_id != first_run
    first = MlflowClient().get_run(first_run)
    # It points at a run that logged this very model file, instead of logging it again.
    model_run = MlflowClient().get_run(run.data.tags[TAG_MODEL_RUN])
    assert model_run.data.tags[TAG_MODEL_MD5] == first.data.tags[TAG_MODEL_MD5]
    assert TAG_MODEL_MD5 not in run.data.tags
    assert run.data.metrics["test_accuracy"] == first.data.metrics["test_accuracy"]
    # the same model file is not registered again
    assert f"version {champion_of(first_output)} is already the champion" in output


def test_override_is_written_like_dvc_exp_run_and_reruns_only_its_stage(flow_project):
    project, first_output = flow_project
    result = mlcycle(
        "run",
        "--set",
        "evaluate.baseline=none",
        cwd=project,
        MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(),
    )
    output = result.stdout + result.stderr
    assert "params.yaml: evaluate.baseline 'logistic_regression' -> 'none'" in output
    assert (
        "stages run: evaluate; unchanged, skipped: collect, validate, preprocess, select, train"
        in output
    )
    assert load_params(project / "params.yaml").evaluate.baseline == "none"
    assert "up to date" in dvc("status", cwd=project).stdout
    run = MlflowClient().get_run(run_id_of(output))
    assert run.data.params["evaluate.baseline"] == "none"
    assert "baseline_accuracy" not in run.data.metrics
    first = MlflowClient().get_run(run_id_of(first_output))
    model_run = MlflowClient().get_run(run.data.tags[TAG_MODEL_RUN])
    assert model_run.data.tags[TAG_MODEL_MD5] == first.data.tags[TAG_MODEL_MD5]


def test_a_failing_stage_stops_the_flow_and_fails_the_run(fresh_project, mlflow_server):
    result = mlcycle(
        "run",
        "--set",
        "collect.source=npz:data/external/missing.npz",
        cwd=fresh_project,
        check=False,
        MLFLOW_TRACKING_URI=mlflow_server,
    )
    assert result.returncode == 1
    assert (
        "\nmlcycle: error: stage 'collect' failed: npz:data/external/missing.npz: file not found\n"
    ) in result.stderr
    assert "Traceback" not in result.stdout + result.stderr  # bad input is not a crash
    for output in ("data/raw", "data/processed", "artifacts/model.pt", "reports/metrics.json"):
        assert not (fresh_project / output).exists(), output
    run = MlflowClient().get_run(run_id_of_failed(result.stdout + result.stderr))
    assert run.info.status == "FAILED"
    assert not mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run.info.run_id}'",
        experiment_ids=[run.info.experiment_id],
        output_format="list",
    )


def run_id_of_failed(output: str) -> str:
    match = re.search(r"MLflow run http://\S+/runs/([0-9a-f]{32})", output)
    assert match, output[-2000:]
    return match.group(1)


def test_the_flow_publishes_validation_and_evaluation_artifacts(flow_project):
    project, _ = flow_project
    artifacts = prefect_artifacts(project)
    assert "| accuracy |" in artifacts["evaluation"]
    validation = artifacts["data-validation"]
    assert re.search(r"\*\*raw_samples\*\*: passed (\d+) of \1 expectations", validation)
    assert re.search(r"\*\*processed_splits\*\*: passed (\d+) of \1 expectations", validation)
    docs = (project / "reports" / "data_docs" / "index.html").resolve()
    assert f"Data Docs: [{docs}]({docs.as_uri()})" in validation


def test_failed_validation_stops_everything_downstream_and_keeps_the_batch(
    fresh_project, mlflow_server
):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(150, 8, 8), dtype=np.uint8)
    labels = np.repeat([0, 1, 2], 50)
    images[50] = images[0]  # the same image, labelled 0 and 1
    np.savez(fresh_project / "data" / "external" / "bad.npz", images=images, labels=labels)
    result = mlcycle(
        "run",
        "--set",
        "collect.source=npz:data/external/bad.npz",
        cwd=fresh_project,
        check=False,
        MLFLOW_TRACKING_URI=mlflow_server,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert (
        "mlcycle: error: stage 'validate' failed: raw_samples failed 1 of 27 expectations "
        "(no two identical images carry different labels)" in output
    )
    assert "conflicting_label" in output and "at rows [0, 50]" in output  # the summary
    for downstream in ("data/validated", "data/processed", "artifacts/model.pt"):
        assert not (fresh_project / downstream).exists(), downstream
    (kept,) = (fresh_project / "data" / "quarantine").iterdir()
    np.testing.assert_array_equal(np.load(kept / "images.npy")[..., 0], images)
    assert json.loads((kept / "validation.json").read_text())["success"] is False
    run = MlflowClient().get_run(run_id_of_failed(output))
    assert run.info.status == "FAILED"
    assert run.data.metrics["validation_success"] == 0.0
    assert [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "validation")] == [
        "validation/validation_raw.json"
    ]
    assert not mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        output_format="list",
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    assert not MlflowClient().search_model_versions(f"run_id = '{run.info.run_id}'")
    published = prefect_artifacts(fresh_project)["data-validation"]  # published on failure too
    assert "**raw_samples**: FAILED 1 of 27 expectations on 150 rows" in published
    assert "no two identical images carry different labels" in published


def test_unreachable_tracking_server_fails_fast_before_anything_runs(fresh_project):
    # within seconds (the docs' words), not MLflow's minutes of retries
    result = mlcycle_within_seconds(
        "run", cwd=fresh_project, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}"
    )
    assert result.returncode == 1
    assert "mlcycle: error: MLflow tracking server http://127.0.0.1:" in result.stderr
    assert "cannot be reached" in result.stderr
    assert not (fresh_project / "data" / "raw").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "train.epoch is not a key of params.yaml"),
        ("train.epochs=many", "train.epochs: Input should be a valid integer (got 'many')"),
        ("train.model=resnet50", "train.model: unknown model 'resnet50'"),
    ],
)
def test_bad_overrides_are_one_clear_line(fresh_project, override, message):
    result = mlcycle("run", "--set", override, cwd=fresh_project, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("mlcycle: error:")
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_failed_run_loses_nothing_dvc_can_bring_it_all_back(flow_project):
    """DVC deletes a stage's outputs before running it; every earlier version stays in its
    cache, so after a failed run the last good state comes back with `dvc checkout`."""
    project, _ = flow_project
    good_params = (project / "params.yaml").read_text()
    before = lock_outputs(project)
    result = mlcycle(
        "run",
        "--set",
        "collect.source=npz:data/external/missing.npz",
        cwd=project,
        check=False,
        MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(),
    )
    assert result.returncode == 1
    assert lock_outputs(project) == before  # dvc.lock still describes the last good run
    (project / "params.yaml").write_text(good_params)  # i.e. git checkout params.yaml
    dvc("checkout", cwd=project)
    assert "Data and pipelines are up to date" in dvc("status", cwd=project).stdout
    assert (project / "data" / "raw" / "images.npy").is_file()


def test_auto_selects_the_model_and_the_version_records_the_choice(flow_project):
    """train.model: auto through the flow: a search (nested trial runs, a Prefect table, the
    files in MLflow and in `dvc plots`), then the winner trained, evaluated and registered."""
    project, _ = flow_project
    space = (
        "select.candidates={mlp: {hidden_sizes: {choices: [[32], [64]]}}, "
        "cnn: {hidden_size: {choices: [16, 32]}}}"
    )
    result = mlcycle(
        "run",
        "--set",
        "train.model=auto",
        "--set",
        space,
        "--set",
        "select.max_trials=3",
        "--set",
        "select.epochs=2",
        cwd=project,
        MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(),
    )
    output = result.stdout + result.stderr
    assert "stages run: select, train, evaluate" in output
    selection = json.loads((project / "reports" / "selection.json").read_text())
    assert selection["mode"] == "search" and len(selection["trials"]) == 3
    winner = selection["winner"]
    assert f"training-pipeline finished: {winner['model']} (selected) test accuracy" in output

    client = MlflowClient()
    run = client.get_run(run_id_of(output))
    assert run.data.params["train.model"] == "auto"
    assert run.data.params["selected.model"] == winner["model"]
    assert run.data.params["selected.lr"] == str(winner["optimizer"]["lr"])
    children = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    assert len(children) == 3
    assert {a.path for a in client.list_artifacts(run.info.run_id, "selection")} == {
        "selection/selection.json",
        "selection/selection_trials.csv",
        "selection/selection.png",
    }
    # the registered version records what was trained: the winner's family and options
    version = next(
        v
        for v in client.search_model_versions("name='mlcycle-classifier'")
        if v.tags.get("mlcycle.mlflow_run_id") == run.info.run_id
    )
    assert version.tags["family"] == winner["model"]  # the family trained, not "auto"
    recorded = json.loads(get_model_version(version.name, version.version).tags[TAG_PARAMS])
    assert recorded["selected.model"] == winner["model"]
    for option, value in winner["options"].items():
        assert recorded[f"selected.{winner['model']}.{option}"] == str(value)
    table = prefect_artifacts(project)["model-selection"]
    assert all(f'"trial": {n}' in table or f"'trial': {n}" in table for n in range(3)), table

    plots = json.loads(dvc("plots", "show", "--json", cwd=project).stdout)["data"]
    scatter = plots["Model selection (validation accuracy vs training seconds)"]
    assert scatter and scatter[0]["type"] == "vega"
    assert "reports/selection.png" in plots
    # every stage, select, train and evaluate included, matches dvc.lock
    assert "Data and pipelines are up to date" in dvc("status", cwd=project).stdout
