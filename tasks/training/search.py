"""Model selection's trials: each suggests a family and options from ``select.candidates``, is
trained by the same loop as the train stage, judged on the validation split only, and recorded
in a run nested under the pipeline's. The study they belong to is ``tasks/training/study.py``'s.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from models import parameter_count
from tasks.core.config import OPTIMIZER_OPTIONS, Params, TrainParams, search_space
from tasks.core.files import ImageDataset
from tasks.core.model_spec import ModelSpec
from tasks.core.tracking import RunTracker, child_run, end_run
from tasks.training.checkpoint import TrainingState
from tasks.training.choice import ModelChoice, fixed_choice
from tasks.training.epochs import EpochReport, PretrainingEpoch, TrainingEpoch
from tasks.training.interrupts import HeldInterrupts, holding_interrupts
from tasks.training.loop import TrainingDiverged, fit, start_training
from tasks.training.study import FINISHED, finished_trials, winning_order

log = logging.getLogger("mlcycle.select")

QUIET_S = 30  # a long trial says how far it got when nothing was printed for this long


def suggest(trial: optuna.Trial, candidates: Mapping[str, Mapping[str, Any]]) -> ModelChoice:
    """A family and values for its ranged options, named ``<family>.<option>`` in the study."""
    family = trial.suggest_categorical("model", list(candidates))
    options: dict[str, Any] = {}
    optimizer: dict[str, Any] = {}
    for option, spec in candidates[family].items():
        value = _suggest_value(trial, f"{family}.{option}", spec)
        (optimizer if option in OPTIMIZER_OPTIONS else options)[option] = value
    return ModelChoice(family, options, optimizer)


def _suggest_value(trial: optuna.Trial, name: str, spec: Any) -> Any:
    if not isinstance(spec, Mapping):
        return spec
    if "choices" in spec:
        choices = spec["choices"]
        if all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            return trial.suggest_categorical(name, choices)
        # Optuna stores plain values only: lists (layer widths) travel as their JSON text.
        return json.loads(trial.suggest_categorical(name, [json.dumps(c) for c in choices]))
    low, high, step, log_scale = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    if all(isinstance(v, int) for v in (low, high)) and isinstance(step, int | None):
        return trial.suggest_int(name, low, high, step=step or 1, log=log_scale)
    return trial.suggest_float(name, float(low), float(high), step=step, log=log_scale)


@dataclass(frozen=True)
class TrialData:
    train_set: ImageDataset
    val_set: ImageDataset
    split_info: Mapping[str, Any]  # preprocess.json: input shape, classes, statistics


def trial_params(params: Params, choice: ModelChoice) -> TrainParams:
    """A trial trains like the train stage with the choice applied, on the trial's budget."""
    base = params.train.model_copy(
        update={
            "epochs": params.select.epochs,
            "early_stopping_patience": params.select.early_stopping_patience,
            "resume": False,
        }
    )
    return choice.apply(base, origin=f"select.candidates.{choice.model}")


def make_objective(
    params: Params,
    data: TrialData,
    parent_run_id: str | None,
    progress: SearchProgress,
    interrupts: HeldInterrupts | None = None,
) -> Callable[[optuna.Trial], float]:
    candidates = search_space(params.select.candidates)

    def objective(trial: optuna.Trial) -> float:
        train = trial_params(params, suggest(trial, candidates))
        # The whole choice, not just the ranged part: what train trains is this file alone.
        trial.set_user_attr("choice", fixed_choice(train).to_json())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        progress.started(trial, train)
        return run_trial(trial, train, data, parent_run_id, progress, interrupts)

    return objective


# A trial's MLflow run: how it ended (the tag, and the run's status in the MLflow UI).
TAG_TRIAL_STATE = "mlcycle.trial_state"
RUN_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
EPOCH_CURVE = "epoch/"  # per-epoch metrics; the bare names hold the trial's result


def run_trial(
    trial: optuna.Trial,
    train: TrainParams,
    data: TrialData,
    parent_run_id: str | None,
    progress: SearchProgress | None = None,
    interrupts: HeldInterrupts | None = None,
) -> float:
    """Train one trial; a Ctrl-C held by ``interrupts`` lands in ``fit``, not in a record."""
    interrupts = interrupts or HeldInterrupts()
    spec = ModelSpec.for_split(train.model, train.model_options(), data.split_info)
    model, optimizer, _ = start_training(spec, train)
    parameters = parameter_count(model)
    trial.set_user_attr("parameters", parameters)
    tracker = _trial_run(trial, train, parent_run_id, parameters)
    started = time.perf_counter()
    state = TrainingState()

    def after_epoch(state: TrainingState, report: EpochReport) -> None:
        with interrupts.held():  # Optuna's storage and MLflow are written here
            _after_epoch(state, report)

    def _after_epoch(state: TrainingState, report: EpochReport) -> None:
        if isinstance(report, PretrainingEpoch):
            if tracker:
                tracker.log_metrics(report.metrics(), step=report.epoch)
            return
        epoch = report.epoch
        _record(trial, state, started)
        if tracker:
            curves = {f"{EPOCH_CURVE}{k}": v for k, v in report.scores().items()}
            tracker.log_metrics(curves, step=epoch)
        if progress:
            progress.epoch(trial, report, train.epochs)
        trial.report(report.val_loss, epoch)
        if trial.should_prune():
            trial.set_user_attr("pruned_at_epoch", epoch)
            raise optuna.TrialPruned()

    outcome, problem = "failed", None
    try:
        with interrupts.delivered():
            fit(model, optimizer, train, data.train_set, data.val_set, state, after_epoch)
        outcome = "complete"
    except optuna.TrialPruned:
        outcome = "pruned"
        raise
    except Exception as error:
        problem = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise
    finally:
        _record(trial, state, started)
        if tracker:
            _close_trial_run(tracker, trial, state, train, outcome, problem)
    return state.best_val_loss


def _record(trial: optuna.Trial, state: TrainingState, started: float) -> None:
    """The trial's result as selection.json and its MLflow run report it: its best epoch's."""
    trial.set_user_attr("val_accuracy", state.best_val_accuracy)
    trial.set_user_attr("val_loss", state.best_val_loss)
    trial.set_user_attr("best_epoch", state.best_epoch)
    trial.set_user_attr("epochs", state.epoch)
    trial.set_user_attr("train_seconds", round(time.perf_counter() - started, 3))


def _trial_run(
    trial: optuna.Trial, train: TrainParams, parent_run_id: str | None, parameters: int
) -> RunTracker | None:
    if parent_run_id is None:
        return None
    tracker = child_run(
        parent_run_id,
        trial_run_name(trial.number, train.model),
        {"mlcycle.study": trial.study.study_name, "mlcycle.trial": str(trial.number)},
    )
    tracker.log_values({**fixed_choice(train).flat(), "parameters": parameters})
    return tracker


def trial_run_name(number: int, family: str, outcome: str | None = None) -> str:
    """``trial-003-cnn``, and how it ended once it did (``trial-003-cnn-pruned``)."""
    name = f"trial-{number:03d}-{family}"
    return f"{name}-{outcome}" if outcome and outcome != "complete" else name


def _close_trial_run(
    tracker: RunTracker,
    trial: optuna.Trial,
    state: TrainingState,
    train: TrainParams,
    outcome: str,
    problem: str | None,
) -> None:
    """End the trial's run with its result under the bare metric names (what selection.json
    compares: the best epoch's), its state as a tag, its status and name, and a line saying
    how it ended."""
    attrs = trial.user_attrs
    result = {"val_accuracy": state.best_val_accuracy, "val_loss": state.best_val_loss}
    tracker.log_metrics(
        {
            **(result if state.best_epoch else {}),  # none before a first epoch ended
            "best_epoch": state.best_epoch,
            "epochs": state.epoch,
            "train_seconds": attrs.get("train_seconds", math.nan),
            "parameters": attrs.get("parameters", math.nan),
        }
    )
    tracker.set_tags(
        {TAG_TRIAL_STATE: outcome, NOTE_TAG: trial_note(trial, state, train, outcome, problem)}
    )
    end_run(tracker.run_id, RUN_STATUS[outcome], trial_run_name(trial.number, train.model, outcome))


def trial_note(
    trial: optuna.Trial,
    state: TrainingState,
    train: TrainParams,
    outcome: str,
    problem: str | None = None,
) -> str:
    """How a trial ended, in a sentence for its run's description."""
    best = (
        f"val_accuracy {state.best_val_accuracy:.4f} and val_loss {state.best_val_loss:.4f} "
        f"are its best epoch's ({state.best_epoch})"
    )
    if outcome == "pruned":
        pruner = trial.study.pruner
        why = (
            "its validation loss was worse than the median of earlier trials at that epoch"
            if isinstance(pruner, optuna.pruners.MedianPruner)
            else "its validation loss did not pass the pruner's rule"
        )
        return (
            f"Pruned: Optuna's {type(pruner).__name__} stopped trial {trial.number} after "
            f"epoch {state.epoch} of {train.epochs} ({why}); {best}."
        )
    if outcome == "failed":
        return (
            f"Failed in epoch {state.epoch + 1} of {train.epochs}: "
            f"{problem or 'the search was stopped'}."
        )
    return (
        f"Trial {trial.number} of {trial.study.study_name}: trained {state.epoch} of "
        f"{train.epochs} epochs; {best}, what the selection compares."
    )


def run_search(
    study: optuna.Study,
    params: Params,
    data: TrialData,
    parent_run_id: str | None,
) -> None:
    """Run trials until the study holds ``select.max_trials`` finished ones (all workers
    together) or ``select.timeout_s`` has passed; a trial that diverges fails alone."""
    budget = params.select.max_trials
    remaining = budget - len(finished_trials(study))
    if remaining <= 0:
        log.info("select: study %s already holds %d finished trials", study.study_name, budget)
        return
    log.info(
        "select: up to %d trials of %s (%s), at most %.0fs",
        remaining,
        ", ".join(params.select.candidates),
        study.study_name,
        params.select.timeout_s,
    )
    progress = SearchProgress(budget)
    with holding_interrupts() as interrupts:
        study.optimize(
            make_objective(params, data, parent_run_id, progress, interrupts),
            n_trials=remaining,
            timeout=params.select.timeout_s,
            catch=(TrainingDiverged,),
            callbacks=[
                # Running trials count too: a worker stops when the others' trials will fill
                # the budget. Two workers starting their last trial at once can pass it by one.
                optuna.study.MaxTrialsCallback(
                    budget, states=(*FINISHED, optuna.trial.TrialState.RUNNING)
                ),
                progress.finished,
                interrupts.raise_if_pending,  # a Ctrl-C held while the trial was told
            ],
            gc_after_trial=False,
        )


class SearchProgress:
    """The search's lines on the console (and so in the Prefect run log): a line as each
    trial starts and ends, with the best so far and the time the search has taken, and one
    per epoch only when a trial has been quiet for ``quiet_s``."""

    def __init__(self, budget: int, quiet_s: float = QUIET_S) -> None:
        self.budget = budget
        self.quiet_s = quiet_s
        self.began = time.monotonic()
        self.last_line = self.began

    def say(self, message: str, *args: Any) -> None:
        log.info(message, *args)
        self.last_line = time.monotonic()

    def elapsed(self) -> str:
        return duration(time.monotonic() - self.began)

    def started(self, trial: optuna.Trial, train: TrainParams) -> None:
        done = len(finished_trials(trial.study))
        choice = fixed_choice(train).to_json()
        self.say(
            "select: trial %d starts (%d/%d): %s %s, up to %d epochs",
            trial.number,
            min(done + 1, self.budget),
            self.budget,
            train.model,
            _options_text(choice),
            train.epochs,
        )

    def epoch(self, trial: optuna.Trial, report: TrainingEpoch, epochs: int) -> None:
        if time.monotonic() - self.last_line < self.quiet_s:
            return
        self.say(
            "select:   trial %d epoch %d/%d  val loss %.4f acc %.4f  (%s elapsed)",
            trial.number,
            report.epoch,
            epochs,
            report.val_loss,
            report.val_accuracy,
            self.elapsed(),
        )

    def finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.user_attrs
        choice = attrs.get("choice", {})
        if trial.state == optuna.trial.TrialState.PRUNED:
            how = f"pruned at epoch {attrs.get('pruned_at_epoch', attrs.get('epochs', '?'))}"
        elif trial.state == optuna.trial.TrialState.FAIL:
            how = "failed"
        else:
            how = f"complete, best epoch {attrs.get('best_epoch', '?')}/{attrs.get('epochs', '?')}"
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        best = min(complete, key=winning_order, default=None)
        self.say(
            "select: [%d/%d] trial %d %s %s: val acc %.4f, val loss %.4f in %s | best so far: "
            "%s | %s elapsed",
            len(finished_trials(study)),
            self.budget,
            trial.number,
            choice.get("model", "?"),
            how,
            attrs.get("val_accuracy", math.nan),
            attrs.get("val_loss", math.nan),
            duration(attrs.get("train_seconds", math.nan)),
            f"trial {best.number} ({best.user_attrs['choice']['model']}) val acc "
            f"{best.user_attrs['val_accuracy']:.4f}"
            if best
            else "none complete yet",
            self.elapsed(),
        )


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    if not math.isfinite(seconds):
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _options_text(choice: Mapping[str, Any]) -> str:
    values = {**choice.get("options", {}), **choice.get("optimizer", {})}
    return " ".join(f"{k}={_short(v)}" for k, v in values.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else json.dumps(value).replace(" ", "")
