"""The fault suite: a hostile user's try-out of `mlcycle run`, each fault once, in a clone that
has run the pipeline once and committed its dvc.lock (champion v1 registered).

Every test ends the same way: a clear error (one line), nothing registered from the broken run,
no process of the run left behind, and a workspace that `git checkout params.yaml dvc.lock &&
dvc checkout` restores to a clean `dvc status`.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import WITHIN_SECONDS, live_processes
from tests.integration.helpers import (
    BackgroundRun,
    MlflowService,
    copy_project,
    dvc,
    mlcycle,
    run,
    start_up_seconds,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LONG_RUN = ("--set", "train.epochs=300", "--set", "train.early_stopping_patience=null")


@pytest.fixture
def project(ran_project: Path, tmp_path: Path) -> Path:
    return copy_project(ran_project, tmp_path)


def processes_in(project: Path) -> list[str]:
    """The processes whose working folder is inside ``project``: pid, state, process group
    (and whether its leader, the guard of tasks.core.processes, still lives), command line."""
    found = live_processes()
    alive = {process.pid for process in found}
    return [
        f"pid {process.pid} state {process.state} group {process.group} "
        f"(leader {'alive' if process.group in alive else 'gone'}): {process.command}"
        for process in found
        if process.cwd is not None and (process.cwd == project or project in process.cwd.parents)
    ]


def wait_until_no_process_in(project: Path, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while processes_in(project):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes outlived the run: {processes_in(project)}")
        time.sleep(0.2)


def runs_of(project: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        experiment = MlflowClient().get_experiment_by_name("mlcycle")
        if experiment is None:
            return []
        return MlflowClient().search_runs(
            [experiment.experiment_id], order_by=["attributes.start_time DESC"]
        )
    finally:
        mlflow.set_tracking_uri(None)


def registered_versions(project: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        return MlflowClient().search_model_versions("name = 'mlcycle-classifier'")
    finally:
        mlflow.set_tracking_uri(None)


def assert_nothing_registered_from_the_broken_run(project: Path) -> None:
    assert [str(v.version) for v in registered_versions(project)] == ["1"]  # the clean run's


def assert_restorable(project: Path) -> None:
    run(["git", "checkout", "params.yaml", "dvc.lock"], cwd=project)
    dvc("checkout", "-q", cwd=project)
    assert "Data and pipelines are up to date." in dvc("status", cwd=project).stdout


@pytest.mark.parametrize(
    ("signum", "code", "how"),
    [
        pytest.param(signal.SIGINT, 130, "interrupted (Ctrl-C)", id="ctrl-c"),
        pytest.param(signal.SIGTERM, 143, "terminated (SIGTERM)", id="sigterm"),
    ],
)
def test_a_signal_mid_training_stops_the_whole_run(project, signum, code, how):
    shut_down = start_up_seconds(project)  # the processes' own exit, at this moment's load
    pipeline = BackgroundRun(project, *LONG_RUN)
    pipeline.wait_for("train: epoch 2/300")
    # Ctrl-C twice, as people do: the second one must not cut the stop short
    seconds = pipeline.signal_group(signum, again_after_s=0.5 if signum == signal.SIGINT else None)

    assert pipeline.process.returncode == code, pipeline.output[-3000:]
    assert seconds < WITHIN_SECONDS + shut_down, f"took {seconds:.1f} s to stop ({shut_down:.1f})"
    assert pipeline.lines[-1].startswith(f"mlcycle: stopped, {how}: the MLflow run is marked")
    assert "Traceback" not in pipeline.output
    wait_until_no_process_in(project, timeout_s=3)
    latest = runs_of(project)[0]
    assert latest.info.status == "KILLED"
    assert "aborted" in latest.data.tags["mlcycle.stopped"]
    assert_nothing_registered_from_the_broken_run(project)
    assert_restorable(project)


def test_after_kill_9_nothing_runs_on_and_the_next_run_closes_the_dead_one(project):
    pipeline = BackgroundRun(project, *LONG_RUN)
    pipeline.wait_for("train: epoch 2/300")
    pipeline.process.kill()  # the CLI alone, as `kill -9 <pid>`: its children must follow
    pipeline.process.wait()
    wait_until_no_process_in(project, timeout_s=10)
    dead = runs_of(project)[0]
    assert dead.info.status == "RUNNING"  # nobody was left to close it ...

    run(["git", "checkout", "params.yaml"], cwd=project)
    result = mlcycle("run", "--set", "train.epochs=1", cwd=project, check=False)
    assert "died without finishing" in result.stderr
    assert f"its MLflow run {dead.info.run_id} is now marked KILLED" in result.stderr
    assert (
        MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(dead.info.run_id).info.status
        == "KILLED"
    )  # ... until the next command did
    assert result.returncode == 0, result.stderr[-3000:]
    assert dead.info.run_id not in {
        v.tags["mlcycle.mlflow_run_id"] for v in registered_versions(project)
    }


def test_a_second_run_in_the_same_workspace_is_refused_before_it_writes(project):
    first = BackgroundRun(project, *LONG_RUN, "--set", "train.seed=33")
    first.wait_for("train: epoch 2/300")
    second = mlcycle("run", "--set", "train.seed=34", cwd=project, check=False)
    assert second.returncode == 1
    assert "this workspace is busy: `mlcycle run --set train.epochs=300" in second.stderr
    assert "train.seed=33` (pid " in second.stderr
    assert "seed: 33" in (project / "params.yaml").read_text()  # untouched by the second
    first.signal_group(signal.SIGINT)
    assert_nothing_registered_from_the_broken_run(project)
    assert_restorable(project)


def test_the_tracking_server_dying_mid_run_fails_it_clearly(project, tmp_path):
    """The troubleshooting page: the run fails within seconds, naming the server; nothing is
    registered."""
    shut_down = start_up_seconds(project)  # the processes' own exit, at this moment's load
    (tmp_path / "mlflow").mkdir()
    server = MlflowService(tmp_path / "mlflow").start()
    try:
        pipeline = BackgroundRun(project, *LONG_RUN, MLFLOW_TRACKING_URI=server.uri)
        pipeline.wait_for("train: epoch 2/300")
        server.stop()
        stopped = time.monotonic()
        pipeline.process.wait(timeout=120)
        seconds = time.monotonic() - stopped
        pipeline.reader.join(10)
    finally:
        server.stop()
    assert pipeline.process.returncode == 1, pipeline.output[-3000:]
    error = pipeline.lines[-1]
    assert error.startswith("mlcycle: error: stage 'train' failed: "), pipeline.output[-3000:]
    assert server.uri.removeprefix("http://") in error or "MLflow" in error, error
    assert seconds < WITHIN_SECONDS + shut_down, (
        f"failed {seconds:.1f} s after the server stopped ({shut_down:.1f} s to start and refuse)"
    )
    wait_until_no_process_in(project, timeout_s=5)
    server.start()  # the same store: nothing was registered there, nor in the project's own
    try:
        assert MlflowClient(server.uri).search_model_versions() == []
    finally:
        server.stop()
    assert_nothing_registered_from_the_broken_run(project)
    assert_restorable(project)


def test_a_source_outside_data_external_is_refused(project, tmp_path):
    outside = tmp_path / "digits"
    outside.mkdir()
    result = mlcycle("run", "--set", f"collect.source=folder:{outside}", cwd=project, check=False)
    assert result.returncode == 1
    assert f"collect.source folder: {outside} is outside data/external/" in result.stderr
    assert run(["git", "status", "--porcelain", "params.yaml"], cwd=project).stdout == ""
    # a symlink inside data/external that leads out: refused by the collect stage itself
    (project / "data" / "external" / "digits").symlink_to(outside)
    linked = mlcycle(
        "run", "--set", "collect.source=folder:data/external/digits", cwd=project, check=False
    )
    assert linked.returncode == 1
    assert "through a symlink" in linked.stderr
    assert_nothing_registered_from_the_broken_run(project)
    assert_restorable(project)


def test_an_output_folder_that_cannot_be_written_is_named(project):
    (project / "artifacts").rename(project / "artifacts-moved")
    (project / "artifacts").write_text("a file where the artifacts folder belongs")
    result = mlcycle("run", "--set", "train.seed=7", cwd=project, check=False)  # retrains
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    # DVC refuses before the stage runs (it clears a stage's outputs first); either way the
    # line names the output and why (the stage's own writer: test_artifacts.py)
    assert error.startswith("mlcycle: error: stage 'train' failed: "), error
    assert "artifacts/model.pt" in error and "Not a directory" in error, error
    assert_nothing_registered_from_the_broken_run(project)
    assert runs_of(project)[0].info.status == "FAILED"
    (project / "artifacts").unlink()
    (project / "artifacts-moved").rename(project / "artifacts")
    assert_restorable(project)


SEARCH = (
    "--set",
    "train.model=auto",
    "--set",
    "select.candidates={mlp: {hidden_sizes: {choices: [[16], [32], [64]]}}}",
    "--set",
    "select.epochs=15",
    "--set",
    "select.early_stopping_patience=null",
    "--set",
    "select.pruning_warmup_epochs=15",
)


def finished_trials(project: Path) -> int:
    import optuna

    storage = f"sqlite:///{project / 'artifacts' / 'selection' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(states=states))


def test_ctrl_c_mid_selection_stops_it_and_the_next_run_keeps_its_finished_trials(project):
    search = BackgroundRun(project, *SEARCH, "--set", "select.max_trials=50")
    search.wait_for("select: [2/50]")
    search.signal_group(signal.SIGINT, again_after_s=0.5)
    assert search.process.returncode == 130, search.output[-3000:]
    assert "Traceback" not in search.output
    wait_until_no_process_in(project, timeout_s=3)
    assert not [r for r in runs_of(project) if r.info.status == "RUNNING"]  # no trial left open
    assert not (project / "reports" / "selection.json").exists()
    kept = finished_trials(project)
    assert kept >= 2
    assert_nothing_registered_from_the_broken_run(project)

    # the same search with a budget the kept trials nearly fill: only the rest is trained
    result = mlcycle("run", *SEARCH, "--set", f"select.max_trials={kept + 1}", cwd=project)
    output = result.stdout + result.stderr
    assert "select: up to 1 trials" in output
    assert f"select: [{kept + 1}/{kept + 1}]" in output
    assert finished_trials(project) == kept + 1
