"""Promises of the docs that a second command, a signal or a busy slot puts to the test, each
watched as the user would watch it: `mlcycle` as real processes in clones that ran the pipeline
once (champion v1), a real Prefect server for the training slot, real signals.

- a `register` or `restore` while a run works is refused at once, before anything is written
  (docs/guide/troubleshooting.md, "The workspace and the data");
- Ctrl-C during the model search marks the trial in progress failed, its MLflow run too
  (troubleshooting, "Stopping a run");
- a training run that waits for the slot gives up after `schedule.slot_wait_minutes`, having
  touched nothing (docs/guide/closing-the-loop.md, "One training run at a time");
- more `train.processes` than GPUs is refused before `params.yaml` is written
  (docs/guide/training.md; on a CUDA machine only: without one, `train.device=cuda` is refused
  first).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.helpers import BackgroundRun, copy_project, mlcycle, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LONG_RUN = ("--set", "train.epochs=300", "--set", "train.early_stopping_patience=null")
IN_TRAINING = "train: epoch 2/300"


def tracking(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def versions(project: Path) -> list[str]:
    found = tracking(project).search_model_versions("name = 'mlcycle-classifier'")
    return sorted(str(version.version) for version in found)


@pytest.fixture
def project(ran_project: Path, tmp_path: Path) -> Path:
    return copy_project(ran_project, tmp_path)


def test_register_and_restore_are_refused_while_a_run_works(project):
    first = BackgroundRun(project, *LONG_RUN, "--set", "train.seed=33")
    try:
        first.seen_at(IN_TRAINING)
        params_yaml = (project / "params.yaml").read_bytes()
        dvc_lock = (project / "dvc.lock").read_bytes()
        for command in (("register",), ("restore", "1")):
            refused = mlcycle(*command, cwd=project, check=False)
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert "this workspace is busy: `mlcycle run --set train.epochs=300" in refused.stderr
            assert "train.seed=33` (pid " in refused.stderr
            assert "Traceback" not in refused.stderr
            # "at once": refused while the run still works, not after waiting for it
            assert first.process.poll() is None, command
            # before anything is written: the run's params.yaml and dvc.lock, and v1 alone
            assert (project / "params.yaml").read_bytes() == params_yaml, command
            assert (project / "dvc.lock").read_bytes() == dvc_lock, command
            assert versions(project) == ["1"], command
        assert first.process.poll() is None  # the run went on, undisturbed
    finally:
        assert first.stop() == 130, first.output[-3000:]


SEARCH = (
    "--set",
    "train.model=auto",
    "--set",
    "select.candidates={mlp: {hidden_sizes: {choices: [[16], [32], [64]]}}}",
    "--set",
    "select.epochs=300",
    "--set",
    "select.early_stopping_patience=null",
    "--set",
    "select.pruning_warmup_epochs=300",
    "--set",
    "select.max_trials=20",
)


def trial_run_exists(project: Path, number: int) -> bool:
    experiment = tracking(project).get_experiment_by_name("mlcycle")
    found = tracking(project).search_runs(
        [experiment.experiment_id], f"tags.`mlcycle.trial` = '{number}'"
    )
    return bool(found)


def test_ctrl_c_mid_search_marks_the_trial_in_progress_failed_and_its_mlflow_run_too(project):
    import optuna

    search = BackgroundRun(project, *SEARCH)
    try:
        # the second trial's start: the first has ended (its result must stay) and this one
        # trains for many seconds more (300 epochs), so the Ctrl-C lands in the middle of it
        search.seen_at("select: trial 1 starts", timeout_s=600)
        started = [line for _, line in search.timed if re.search(r"select: trial \d+ starts", line)]
        in_progress = int(re.search(r"trial (\d+) starts", started[-1]).group(1))
        # ... and once its MLflow run exists, which the Ctrl-C must then mark failed
        wait_until(lambda: trial_run_exists(project, in_progress), "the trial's MLflow run", 60)
    finally:
        code = search.stop()
    assert code == 130, search.output[-3000:]
    assert "Traceback" not in search.output

    storage = f"sqlite:///{project / 'artifacts' / 'selection' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    failed = [trial.number for trial in trials if trial.state == optuna.trial.TrialState.FAIL]
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    # the one in progress (or, had it just ended, the next) failed; none left RUNNING for ever
    assert len(failed) == 1 and failed[0] >= in_progress, [(t.number, t.state) for t in trials]
    assert all(trial.state in ended for trial in trials if trial.number != failed[0])

    client = tracking(project)
    experiment = client.get_experiment_by_name("mlcycle")
    trial_runs = [
        (run.info.status, run.data.tags["mlcycle.trial_state"])
        for run in client.search_runs([experiment.experiment_id])
        if "mlcycle.trial_state" in run.data.tags
    ]
    assert trial_runs.count(("FAILED", "failed")) == 1, trial_runs
    assert all(status in ("FINISHED", "KILLED") for status, how in trial_runs if how != "failed")
    assert versions(project) == ["1"]


def test_a_run_waiting_for_the_training_slot_gives_up_after_slot_wait_minutes(
    ran_project, prefect_server, tmp_path
):
    server = {"PREFECT_API_URL": prefect_server}
    holder_project = copy_project(ran_project, tmp_path / "holder")
    waiter_project = copy_project(ran_project, tmp_path / "waiter")
    holder = BackgroundRun(holder_project, *LONG_RUN, **server)
    try:
        holder.seen_at(IN_TRAINING)
        before = {
            name: (waiter_project / name).read_bytes() for name in ("params.yaml", "dvc.lock")
        }
        wait_s = 12.0  # schedule.slot_wait_minutes 0.2
        waiter = BackgroundRun(
            waiter_project,
            "--set",
            f"schedule.slot_wait_minutes={wait_s / 60}",
            "--set",
            "train.seed=2",
            **server,
        )
        waiting_since = waiter.seen_at("waiting for the training slot")
        waiter.process.wait(timeout=120)
        waiter.reader.join(10)
        gave_up_after = waiter.timed[-1][0] - waiting_since
        assert waiter.process.returncode == 1, waiter.output[-3000:]
        assert (
            f"was not free within {wait_s:g} s (schedule.slot_wait_minutes); this run did nothing"
        ) in waiter.output
        assert "Traceback" not in waiter.output
        # it waited as long as it was told (it says it waits once 2 s of the wait have gone),
        # and gave up then, not much later (its exit included)
        assert wait_s - 2 - 0.5 <= gave_up_after <= wait_s + 30, gave_up_after
        assert holder.process.poll() is None  # the holder trains on
    finally:
        holder.stop()
    # "without touching anything": its files, its registry and its tracking store
    for name, content in before.items():
        assert (waiter_project / name).read_bytes() == content, name
    assert versions(waiter_project) == ["1"]
    experiment = tracking(waiter_project).get_experiment_by_name("mlcycle")
    assert len(tracking(waiter_project).search_runs([experiment.experiment_id])) == len(
        tracking(ran_project).search_runs([experiment.experiment_id])
    )


@pytest.mark.gpu
def test_more_train_processes_than_gpus_is_refused_before_params_yaml_changes(fresh_project):
    import torch

    too_many = torch.cuda.device_count() + 1
    before = (fresh_project / "params.yaml").read_bytes()
    refused = mlcycle(
        "run",
        "--set",
        "train.device=cuda",
        "--set",
        f"train.processes={too_many}",
        "--set",
        f"train.batch_size={64 * too_many}",  # splits evenly: the GPUs alone are short
        cwd=fresh_project,
        check=False,
    )
    assert refused.returncode == 1
    [line] = [text for text in refused.stderr.splitlines() if text.startswith("mlcycle: error:")]
    assert f"train.processes is {too_many} but this machine has {too_many - 1} GPU(s)" in line
    assert (fresh_project / "params.yaml").read_bytes() == before
    assert not (fresh_project / "dvc.lock").exists()


def test_a_stage_that_crashes_on_a_bug_ends_in_one_line_naming_it(fresh_project):
    # a bug nobody foresaw, in the copy's own collect stage (what `dvc repro` runs there)
    stage = fresh_project / "tasks" / "stages" / "collect.py"
    lines = stage.read_text().splitlines(keepends=True)
    future = [n for n, line in enumerate(lines) if line.startswith("from __future__")]
    at = future[-1] + 1 if future else 0  # the first statement it may be
    lines.insert(at, 'raise ZeroDivisionError("a bug nobody foresaw")\n')
    stage.write_text("".join(lines))
    result = mlcycle("run", cwd=fresh_project, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error == (
        "mlcycle: error: stage 'collect' failed: ZeroDivisionError: a bug nobody foresaw "
        "(its traceback is in the log above)"
    ), result.stderr[-3000:]
    assert "Traceback (most recent call last)" in result.stdout + result.stderr  # above it
    assert not (fresh_project / "data" / "raw").exists()
