"""The select stage: an Optuna search on the validation split, its budget, its files, its
nested MLflow runs, and the choice the train stage reads back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.config import ConfigError, Params, load_params
from tasks.stages.select import record_selection, run_select
from tasks.training.choice import FIXED, SEARCHED, chosen_train_params, read_choice
from tests.helpers import REPO_ROOT, TINY_OVERRIDES

SMALL_SPACE = (
    "select.candidates={mlp: {hidden_sizes: {choices: [[16], [32]]}, "
    "lr: {low: 0.001, high: 0.02, log: true}}, cnn: {channels: [4, 8], hidden_size: 16}}"
)


def search_params(tmp_path: Path, *overrides: str) -> Params:
    return load_params(
        REPO_ROOT / "params.yaml",
        overrides=[
            *TINY_OVERRIDES,
            "train.model=auto",
            SMALL_SPACE,
            "select.max_trials=3",
            "select.epochs=2",
            f"select.storage=sqlite:///{tmp_path / 'optuna.db'}",
            *overrides,
        ],
    )


def test_a_fixed_model_skips_the_search_and_records_the_choice(tiny_params, tmp_path):
    result = run_select(tiny_params, processed_dir=tmp_path / "absent", reports_dir=tmp_path)
    assert result["mode"] == FIXED and result["trials"] == []
    mode, choice = read_choice(tmp_path / "selection.json")
    assert (mode, choice.model) == (FIXED, "cnn")
    assert choice.options == {"channels": [8, 16], "hidden_size": 32, "dropout": 0.25}
    assert (tmp_path / "selection.png").stat().st_size > 0
    assert (tmp_path / "selection_trials.csv").read_text().startswith("trial,state,model")


def test_a_fixed_model_needs_neither_torch_nor_optuna():
    """`dvc repro` re-runs select whenever any family's options change: it must stay cheap."""
    code = (
        "import sys; from tasks.stages import select; "
        "print(sorted(m for m in ('torch', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_search_trains_within_its_budget_and_the_winner_is_the_best_on_validation(
    processed_dir, tmp_path
):
    params = search_params(tmp_path)
    result = run_select(params, processed_dir=processed_dir, reports_dir=tmp_path)
    assert result["mode"] == SEARCHED
    trials = result["trials"]
    assert len(trials) == 3 and {t["state"] for t in trials} <= {"complete", "pruned"}
    complete = [t for t in trials if t["state"] == "complete"]
    best = min(complete, key=lambda t: (-t["val_accuracy"], t["val_loss"], t["trial"]))
    assert result["winner"]["trial"] == best["trial"]
    assert result["winner_val_accuracy"] == best["val_accuracy"]
    for row in trials:
        assert row["model"] in {"mlp", "cnn"} and row["parameters"] > 0
        assert row["train_seconds"] > 0 and 1 <= row["epochs"] <= 2
    # The whole choice, so that train depends on this file alone.
    winner = result["winner"]
    defaults = params.train.options_of(winner["model"])
    assert set(winner["options"]) == set(defaults)
    assert set(winner["optimizer"]) == {"optimizer", "lr", "weight_decay", "momentum"}
    csv = (tmp_path / "selection_trials.csv").read_text().splitlines()
    assert len(csv) == 4 and csv[0].split(",")[:3] == ["trial", "state", "model"]


def test_the_train_stage_trains_the_winner_with_its_options(processed_dir, tmp_path):
    params = search_params(tmp_path)
    run_select(params, processed_dir=processed_dir, reports_dir=tmp_path)
    train = chosen_train_params(params, tmp_path / "selection.json")
    winner = json.loads((tmp_path / "selection.json").read_text())["winner"]
    assert train.model == winner["model"]
    assert train.lr == winner["optimizer"]["lr"]
    assert train.model_dump(mode="json")[train.model] == winner["options"]
    assert train.epochs == params.train.epochs  # the trial budget is not the training budget


def test_a_re_run_continues_the_study_instead_of_starting_over(processed_dir, tmp_path):
    run_select(search_params(tmp_path), processed_dir=processed_dir, reports_dir=tmp_path)
    more = run_select(
        search_params(tmp_path, "select.max_trials=4"),
        processed_dir=processed_dir,
        reports_dir=tmp_path,
    )
    assert [t["trial"] for t in more["trials"]] == [0, 1, 2, 3]


def test_the_timeout_stops_the_search_before_max_trials(processed_dir, tmp_path):
    params = search_params(tmp_path, "select.max_trials=200", "select.timeout_s=1")
    result = run_select(params, processed_dir=processed_dir, reports_dir=tmp_path)
    assert 1 <= len(result["trials"]) < 200


def test_the_selection_never_opens_the_test_split(processed_dir, tmp_path):
    """An audit hook sees every file the process opens while the search runs."""
    opened: list[str] = []
    listening = [True]  # an audit hook cannot be removed: it stops recording after the search

    def audit(event: str, args: tuple) -> None:
        if listening[0] and event == "open" and isinstance(args[0], str | Path):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    try:
        run_select(search_params(tmp_path), processed_dir=processed_dir, reports_dir=tmp_path)
    finally:
        listening[0] = False
    seen = [path for path in opened if str(processed_dir) in path]
    assert any(path.endswith("train.npz") for path in seen)
    assert any(path.endswith("val.npz") for path in seen)
    assert not [path for path in seen if "test" in Path(path).name], seen

    # and it runs with the test split gone
    (processed_dir / "test.npz").unlink()
    other = tmp_path / "other"
    other.mkdir()
    params = search_params(other)
    assert run_select(params, processed_dir=processed_dir, reports_dir=other.parent)["winner"]


def test_a_bad_fixed_value_in_the_space_is_named(processed_dir, tmp_path):
    params = search_params(
        tmp_path, "select.candidates={vit: {dim: 30, heads: 4}}", "select.max_trials=1"
    )
    with pytest.raises(ConfigError, match=r"select\.candidates\.vit: train\.vit: dim 30 is not a"):
        run_select(params, processed_dir=processed_dir, reports_dir=tmp_path)


def test_train_with_auto_needs_a_searched_selection(tiny_params, tmp_path):
    auto = load_params(REPO_ROOT / "params.yaml", overrides=[*TINY_OVERRIDES, "train.model=auto"])
    with pytest.raises(ConfigError, match=r"selection\.json: not found; train\.model is auto"):
        chosen_train_params(auto, tmp_path / "selection.json")
    run_select(tiny_params, processed_dir=tmp_path, reports_dir=tmp_path)  # a fixed record
    with pytest.raises(ConfigError, match=r"holds the fixed model 'cnn', but train\.model is auto"):
        chosen_train_params(auto, tmp_path / "selection.json")
    (tmp_path / "selection.json").write_text('{"mode": "search"}')
    with pytest.raises(ConfigError, match="not a selection written by the select stage"):
        chosen_train_params(auto, tmp_path / "selection.json")


def test_trials_are_nested_runs_under_the_parent(tracking_store, processed_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from tasks.core.tracking import tracked_run
    from tasks.training.search import RUN_STATUS, TAG_TRIAL_STATE

    params = search_params(tmp_path)
    with tracked_run(params, run_name="pipeline") as parent:
        result = run_select(
            params, processed_dir=processed_dir, reports_dir=tmp_path, parent_run_id=parent.run_id
        )
        record_selection(parent, tmp_path)  # as the stage's main does, from the files
    client = MlflowClient()
    experiment = client.get_run(parent.run_id).info.experiment_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'"
    )
    assert len(children) == len(result["trials"]) == 3
    rows = {str(row["trial"]): row for row in result["trials"]}
    for child in children:
        row = rows[child.data.tags["mlcycle.trial"]]
        assert child.info.status == RUN_STATUS[row["state"]]
        assert child.data.tags[TAG_TRIAL_STATE] == row["state"]
        assert child.data.params["model"] in {"mlp", "cnn"}
        # the run's result is the trial's, as selection.json has it: its best epoch's
        assert child.data.metrics["val_accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-6)
        assert child.data.metrics["val_loss"] == pytest.approx(row["val_loss"], abs=1e-6)
        assert child.data.metrics["best_epoch"] == row["best_epoch"]
        assert {"train_seconds", "parameters"} <= set(child.data.metrics)
        history = client.get_metric_history(child.info.run_id, "epoch/val_loss")
        assert [m.step for m in history][:1] == [1]  # per-epoch curves
        assert child.data.tags["mlflow.note.content"]  # its description says how it ended
    artifacts = {a.path for a in client.list_artifacts(parent.run_id, "selection")}
    assert artifacts == {
        "selection/selection.json",
        "selection/selection_trials.csv",
        "selection/selection.png",
    }


def test_a_trial_reports_its_best_epoch_not_its_last(
    tracking_store, processed_dir, tmp_path, monkeypatch
):
    """Trial 0 of a real search showed 0.9889 (its last epoch) in MLflow and 0.9926 (its best)
    in selection.json: the run's val_accuracy must be the trial's result."""
    import optuna
    from mlflow.tracking import MlflowClient

    from tasks.core.tracking import tracked_run
    from tasks.stages.select import trial_data
    from tasks.training import search
    from tasks.training.epochs import TrainingEpoch
    from tasks.training.loop import advance

    # the accuracy peaks in epoch 2, with the lowest validation loss; epoch 3 is worse
    scores = [(0.9, 0.6), (0.5, 0.9), (0.6, 0.8)]

    def scripted_fit(model, optimizer, train, train_set, val_set, state, on_epoch):
        for epoch, (loss, accuracy) in enumerate(scores, start=1):
            row = {"epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.5}
            row |= {"val_loss": loss, "val_accuracy": accuracy}
            advance(state, row, model, None)
            on_epoch(state, TrainingEpoch.of_row(row, 0.01))
        return state

    monkeypatch.setattr(search, "fit", scripted_fit)
    params = search_params(tmp_path, "select.max_trials=1", "select.epochs=3")
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    with tracked_run(params, run_name="pipeline") as parent:
        search.run_search(study, params, trial_data(processed_dir), parent.run_id)
    (child,) = MlflowClient().search_runs(
        [MlflowClient().get_run(parent.run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
    )
    assert child.data.metrics["val_accuracy"] == 0.9  # epoch 2's, not the last epoch's 0.8
    assert child.data.metrics["val_loss"] == 0.5
    assert child.data.metrics["best_epoch"] == 2 and child.data.metrics["epochs"] == 3
    assert study.trials[0].user_attrs["val_accuracy"] == 0.9  # what selection.json reports
    assert "best epoch's (2)" in child.data.tags["mlflow.note.content"]


def test_a_pruned_trial_reads_pruned_in_mlflow(tracking_store, processed_dir, tmp_path, caplog):
    import optuna
    from mlflow.tracking import MlflowClient

    from tasks.core.tracking import tracked_run
    from tasks.stages.select import trial_data
    from tasks.training.search import TAG_TRIAL_STATE, run_search

    params = search_params(tmp_path, "select.max_trials=1", "select.epochs=3")
    # a pruner that stops every trial after its first epoch (any validation loss is above 0)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    with (
        tracked_run(params, run_name="pipeline") as parent,
        caplog.at_level("INFO", logger="mlcycle.select"),
    ):
        run_search(study, params, trial_data(processed_dir), parent.run_id)
    (child,) = MlflowClient().search_runs(
        [MlflowClient().get_run(parent.run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
    )
    assert child.info.status == "KILLED"  # what the MLflow UI shows, not "Finished"
    assert child.data.tags[TAG_TRIAL_STATE] == "pruned"
    assert child.info.run_name.endswith("-pruned")
    note = child.data.tags["mlflow.note.content"]
    assert note.startswith("Pruned: Optuna's ThresholdPruner stopped trial 0 after epoch 1 of 3")
    assert child.data.metrics["val_accuracy"] == pytest.approx(
        study.trials[0].user_attrs["val_accuracy"]
    )
    assert "trial 0 " in caplog.text and "pruned at epoch 1" in caplog.text


def test_the_search_says_how_each_trial_went_as_it_goes(processed_dir, tmp_path, caplog):
    params = search_params(tmp_path)
    with caplog.at_level("INFO", logger="mlcycle.select"):
        run_select(params, processed_dir=processed_dir, reports_dir=tmp_path)
    lines = [r.getMessage() for r in caplog.records]
    starts = [line for line in lines if " starts (" in line]
    ends = [line for line in lines if line.startswith("select: [")]
    assert len(starts) == len(ends) == 3
    assert starts[0].startswith("select: trial 0 starts (1/3): ")
    assert "up to 2 epochs" in starts[0]
    assert ends[0].startswith("select: [1/3] trial 0 ")
    for line in ends:
        assert "val acc" in line and "best so far: " in line and line.endswith(" elapsed")
        assert ("complete, best epoch" in line) or ("pruned at epoch" in line)
    assert "best so far: trial " in ends[-1]


def test_a_quiet_trial_says_how_far_it_got(caplog):
    from tasks.training.epochs import TrainingEpoch
    from tasks.training.search import SearchProgress, duration

    def epoch(number: int, val_loss: float, val_accuracy: float) -> TrainingEpoch:
        return TrainingEpoch(number, 0.3, 0.8, val_loss, val_accuracy, 1.0)

    class Trial:
        number = 4

    progress = SearchProgress(budget=10, quiet_s=30.0)
    progress.last_line -= 31  # quiet for 31 s: one epoch line
    with caplog.at_level("INFO", logger="mlcycle.select"):
        progress.epoch(Trial(), epoch(3, 0.25, 0.9), 10)
        progress.epoch(Trial(), epoch(4, 0.2, 0.91), 10)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("select:   trial 4 epoch 3/10  val loss 0.2500 acc 0.9000  (")
    assert [duration(s) for s in (4.4, 185, 3725, float("nan"))] == ["4s", "3m05s", "1h02m", "?"]


@pytest.mark.parametrize(
    "storage",
    ["postgresql://nobody@127.0.0.1:9/optuna", "not-a-database-url"],
    ids=["server-down", "garbage"],
)
def test_a_storage_that_cannot_be_opened_is_named(processed_dir, tmp_path, storage):
    from tasks.training.study import SelectionError

    params = search_params(tmp_path, f"select.storage={storage}")
    with pytest.raises(SelectionError, match=r"select\.storage .*: cannot open the Optuna study"):
        run_select(params, processed_dir=processed_dir, reports_dir=tmp_path)
    assert not (tmp_path / "selection.json").exists()


def test_a_password_in_the_storage_url_is_not_shown():
    from tasks.training.study import shown_url

    assert shown_url("postgresql://me:secret@db/optuna") == "postgresql://me:***@db/optuna"
    assert shown_url("sqlite:///artifacts/selection/optuna.db").endswith("optuna.db")
