"""select: choose the model family and options the train stage trains (``train.model: auto``).

An Optuna search over ``select.candidates`` (``tasks/training/search.py``), every trial a
nested MLflow run under the pipeline's, judged on the validation split. The test split is never
opened: this stage reads ``train.npz``, ``val.npz`` and ``preprocess.json`` only.

With a fixed ``train.model`` the search is skipped and the file records that fixed choice, so
the train stage reads one file either way. Writes ``reports/selection.json`` (the winner and
every trial), ``reports/selection_trials.csv`` and ``reports/selection.png`` (validation
accuracy against training time).

More workers for one study (``select.storage`` on PostgreSQL): ``mlcycle select-worker`` or
``python -m tasks.stages.select --worker`` in as many processes or machines as you like, after
the stage has started.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tasks.core.config import AUTO, Params, load_params
from tasks.core.console import stage_main
from tasks.core.files import atomic_path, read_json, write_json
from tasks.core.paths import PROCESSED_DIR, REPORTS_DIR
from tasks.core.stage_run import WithoutFlow, stage_run
from tasks.core.tracking import RunTracker, flow_mlflow_run_id
from tasks.training.choice import FIXED, SEARCHED, SELECTION_FILE, fixed_choice

log = logging.getLogger("mlcycle.select")

TRIALS_FILE = REPORTS_DIR / "selection_trials.csv"
PLOT_FILE = REPORTS_DIR / "selection.png"
ARTIFACT_PATH = "selection"  # where the parent run keeps the selection files
TAG_SELECTION = "mlcycle.selection_study"  # on a run that holds a search's files
TABLE_COLUMNS = (
    "trial",
    "state",
    "model",
    "options",
    "val_accuracy",
    "val_loss",
    "train_seconds",
    "parameters",
    "epochs",
)


def run_select(
    params: Params,
    processed_dir: Path = PROCESSED_DIR,
    reports_dir: Path = REPORTS_DIR,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Write the selection files and return what ``selection.json`` holds. A search's trials
    are MLflow runs nested under ``parent_run_id`` (None: they are not tracked)."""
    if params.train.model != AUTO:
        result = {"mode": FIXED, "winner": fixed_choice(params.train).to_json(), "trials": []}
        log.info("select: train.model is %s, a fixed choice: no search", params.train.model)
    else:
        result = search(params, processed_dir, parent_run_id)
    write_selection(result, reports_dir)
    return result


def record_selection(tracker: RunTracker, reports_dir: Path = REPORTS_DIR) -> None:
    """Log a search's files to the run (under ``selection/``) and tag it with the study; a
    fixed choice logs nothing."""
    path = reports_dir / SELECTION_FILE.name
    if not path.is_file() or read_json(path)["mode"] != SEARCHED:
        return
    result = read_json(path)
    for name in (SELECTION_FILE.name, TRIALS_FILE.name, PLOT_FILE.name):
        tracker.log_artifact(reports_dir / name, ARTIFACT_PATH)
    tracker.set_tags({TAG_SELECTION: result["study"]})


def search(params: Params, processed_dir: Path, parent_run_id: str | None) -> dict[str, Any]:
    from tasks.training import study as studies
    from tasks.training.search import run_search

    data = trial_data(processed_dir)
    name = studies.study_name(params, processed_dir / "train.npz", processed_dir / "val.npz")
    study = studies.open_study(params, name)
    if parent_run_id is not None:  # where the workers' trials nest too
        study.set_user_attr(studies.PARENT_RUN_ATTR, parent_run_id)
    run_search(study, params, data, parent_run_id)
    studies.wait_for_running(study, studies.GRACE_S)
    return summarise(study, params)


def trial_data(processed_dir: Path) -> Any:
    """The train and val splits and their spec; never the test split."""
    from tasks.core.files import read_split
    from tasks.training.search import TrialData

    train_set, info = read_split(processed_dir, "train")
    val_set, _ = read_split(processed_dir, "val")
    return TrialData(train_set, val_set, info)


def summarise(study: Any, params: Params) -> dict[str, Any]:
    from tasks.training.study import (
        SelectionError,
        finished_trials,
        shown_url,
        storage_url,
        winning_order,
    )

    trials = sorted(finished_trials(study), key=lambda t: t.number)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        failed = len(study.get_trials(deepcopy=False)) - len(trials)
        raise SelectionError(
            f"no selection trial finished ({len(trials)} pruned, {failed} failed or cut off); "
            f"raise select.timeout_s (now {params.select.timeout_s:g}) or select.epochs"
        )
    best = min(complete, key=winning_order)
    return {
        "mode": SEARCHED,
        "study": study.study_name,
        "storage": shown_url(storage_url(params)),
        "objective": "highest validation accuracy, ties broken by the lower validation loss "
        "(each trial's best epoch); the sampler and pruning follow the loss",
        "winner": {**best.user_attrs["choice"], "trial": best.number},
        "winner_val_accuracy": round(best.user_attrs["val_accuracy"], 6),
        "winner_val_loss": round(best.value, 6),
        "trials": [trial_row(t) for t in trials],
    }


def trial_row(trial: Any) -> dict[str, Any]:
    choice = trial.user_attrs.get("choice", {})
    options = {**choice.get("options", {}), **choice.get("optimizer", {})}
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "model": choice.get("model"),
        "options": options,
        "val_accuracy": round(trial.user_attrs.get("val_accuracy", math.nan), 6),
        "val_loss": round(trial.user_attrs.get("val_loss", math.nan), 6),
        "train_seconds": trial.user_attrs.get("train_seconds"),
        "parameters": trial.user_attrs.get("parameters"),
        "epochs": trial.user_attrs.get("epochs"),
        "best_epoch": trial.user_attrs.get("best_epoch"),  # whose scores these are
        "worker": trial.user_attrs.get("worker"),  # host:pid of the process that ran it
    }


def write_selection(result: dict[str, Any], reports_dir: Path) -> None:
    write_json(reports_dir / SELECTION_FILE.name, result)
    rows = [",".join(TABLE_COLUMNS)]
    for row in result["trials"]:
        cells = {**row, "options": _options_cell(row["options"])}
        rows.append(",".join(str(cells[column]) for column in TABLE_COLUMNS))
    with atomic_path(reports_dir / TRIALS_FILE.name) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    plot_selection(result, reports_dir / PLOT_FILE.name)


def _options_cell(options: dict[str, Any]) -> str:
    """One CSV cell: ``key=value`` pairs, no commas."""
    return " ".join(
        f"{k}={json.dumps(v).replace(', ', '/').replace(',', '/')}" for k, v in options.items()
    )


def plot_selection(result: dict[str, Any], path: Path) -> None:
    """Validation accuracy against training seconds, a colour per family, the winner ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    trials = result["trials"]
    if not trials:
        axes.text(
            0.5,
            0.5,
            f"train.model is fixed ({result['winner']['model']}): no search",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )
    for family in sorted({t["model"] for t in trials}):
        for state, marker in (("complete", "o"), ("pruned", "x")):
            shown = [t for t in trials if t["model"] == family and t["state"] == state]
            if shown:
                axes.scatter(
                    [t["train_seconds"] for t in shown],
                    [t["val_accuracy"] for t in shown],
                    marker=marker,
                    label=f"{family} ({state})",
                    color=f"C{sorted({t['model'] for t in trials}).index(family)}",
                )
    winner = next((t for t in trials if t["trial"] == result["winner"].get("trial")), None)
    if winner:
        axes.scatter(
            [winner["train_seconds"]],
            [winner["val_accuracy"]],
            s=240,
            facecolors="none",
            edgecolors="black",
            label=f"chosen: trial {winner['trial']}",
        )
        axes.legend(fontsize=8, loc="lower right")
    axes.set_xlabel("training seconds (trial)")
    axes.set_ylabel("validation accuracy (best epoch)")
    axes.set_title("Model selection: validation accuracy vs training time")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        figure.savefig(handle, format="png", metadata={"Software": None})
    plt.close(figure)


def selection_table(reports_dir: Path = REPORTS_DIR) -> list[dict[str, Any]] | None:
    """The trials as table rows (a Prefect table artifact); None when the model was fixed."""
    result = read_json(reports_dir / SELECTION_FILE.name)
    if result["mode"] != SEARCHED:
        return None
    chosen = result["winner"]["trial"]
    return [
        {
            "trial": row["trial"],
            "chosen": "yes" if row["trial"] == chosen else "",
            "state": row["state"],
            "model": row["model"],
            "options": _options_cell(row["options"]),
            "val accuracy": row["val_accuracy"],
            "train seconds": row["train_seconds"],
            "parameters": row["parameters"],
        }
        for row in result["trials"]
    ]


def run_worker(params: Params, processed_dir: Path = PROCESSED_DIR, wait_s: float = 120) -> int:
    """Join the study the select stage started (waiting up to ``wait_s`` for it to appear) and
    run trials of it until its budget is spent; returns how many trials the study holds
    finished. Same params.yaml and data as the stage, or it is another study."""
    from tasks.training import study as studies
    from tasks.training.search import run_search

    if params.train.model != AUTO:
        raise studies.SelectionError(
            f"train.model is {params.train.model}: there is no search to join (set it to {AUTO})"
        )
    data = trial_data(processed_dir)
    name = studies.study_name(params, processed_dir / "train.npz", processed_dir / "val.npz")
    study = studies.join_study(params, name, wait_s)
    run_search(study, params, data, study.user_attrs.get(studies.PARENT_RUN_ATTR))
    return len(studies.finished_trials(study))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.stages.select", description=__doc__)
    parser.add_argument(
        "--worker", action="store_true", help="run trials of the stage's study, write nothing"
    )
    args = parser.parse_args(argv)
    params = load_params()
    if args.worker:
        finished = run_worker(params)
        log.info("select worker: the study holds %d finished trials", finished)
        return
    if params.train.model != AUTO:  # a fixed choice: nothing to record
        run_select(params)
        return
    with stage_run(params, "select", WithoutFlow.OWN_RUN) as tracker:
        if flow_mlflow_run_id() is None:
            tracker.set_tags({"mlcycle.stage": "select"})
        run_select(params, parent_run_id=tracker.run_id)
        record_selection(tracker)


if __name__ == "__main__":
    stage_main(lambda: main(sys.argv[1:]))
