"""train: fit a model from ``models/`` on the train split, early-stopping on validation loss.

The engine (device, loop, checkpoints) is ``tasks/training``; this stage wires it to the files.

Writes ``artifacts/model.pt`` (best weights plus everything needed to rebuild the model), a
checkpoint per epoch to ``artifacts/checkpoints/last.pt`` (atomically; ``train.resume`` continues
from it), and the per-epoch history to ``reports/``. Per-epoch metrics go to MLflow in one call
per epoch, never per step.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from tasks.core.config import AUTO, TrainParams, load_params
from tasks.core.console import stage_main
from tasks.core.files import atomic_path, read_split, write_json
from tasks.core.model_file import SavedModel, log_model, save_model
from tasks.core.model_spec import ModelSpec
from tasks.core.paths import CHECKPOINT_DIR, MODEL_FILE, PROCESSED_DIR, REPORTS_DIR
from tasks.core.tracking import RunTracker, flow_mlflow_run_id, tracked_run
from tasks.training.checkpoint import (
    TrainingState,
    fingerprint,
    restore_checkpoint,
    save_checkpoint,
)
from tasks.training.choice import chosen_train_params, fixed_choice
from tasks.training.distributed import leave, shard_from_env, torchrun_command, under_torchrun
from tasks.training.loop import PRETRAIN, EpochReport, fit, pretrain_metrics, start_training
from tasks.validation.gate import record_validations

log = logging.getLogger("mlcycle.train")


HISTORY_FILE = REPORTS_DIR / "training_history.csv"


SUMMARY_FILE = REPORTS_DIR / "train.json"


# No wall-clock column: outputs must depend on inputs only (DVC compares them by hash).
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    device: str
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    stopped_early: bool
    seconds: float


def run_train(
    params: TrainParams,
    processed_dir: Path = PROCESSED_DIR,
    model_path: Path = MODEL_FILE,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    reports_dir: Path = REPORTS_DIR,
    tracker: RunTracker | None = None,
) -> TrainResult:
    started = time.perf_counter()
    train_set, info = read_split(processed_dir, "train")
    val_set, _ = read_split(processed_dir, "val")
    spec = ModelSpec.for_split(params.model, params.model_options(), info)
    shard = shard_from_env()  # one process, or one of torchrun's (train.processes)
    model, optimizer, device = start_training(spec, params, shard)
    identity = fingerprint(spec, params, processed_dir / "train.npz")
    checkpoint_path = checkpoint_dir / "last.pt"
    state = TrainingState()
    if params.resume:
        state = restore_checkpoint(checkpoint_path, identity, model, optimizer, params)
    if not shard.is_main:
        log.setLevel(logging.WARNING)  # rank 0 speaks for all processes
    log.info(
        "train: %s on %s, %d train / %d val images, up to %d epochs%s%s",
        params.model,
        device,
        len(train_set.labels),
        len(val_set.labels),
        params.epochs,
        f", {shard.world} data-parallel processes" if shard.parallel else "",
        f" (resuming after epoch {state.epoch})" if state.epoch else "",
    )

    def after_epoch(state: TrainingState, report: EpochReport) -> None:
        if not shard.is_main:
            return  # rank 0 alone checkpoints and logs
        save_checkpoint(checkpoint_path, state, identity, model, optimizer)
        if report.phase == PRETRAIN:
            after_pretraining_epoch(report)
            return
        row, epoch = report.row, state.epoch
        log.info(
            "train: epoch %d/%d  loss %.4f acc %.4f | val loss %.4f acc %.4f  (%.1fs)%s",
            epoch,
            params.epochs,
            row["train_loss"],
            row["train_accuracy"],
            row["val_loss"],
            row["val_accuracy"],
            report.seconds,
            "  best" if state.best_epoch == epoch else "",
        )
        if tracker is not None:
            tracker.log_metrics(
                {key: value for key, value in row.items() if key != "epoch"}
                | {"epoch_seconds": report.seconds},
                step=epoch,
            )
        if state.stopped_early:
            log.info(
                "train: early stop, val loss has not improved for %d epochs",
                params.early_stopping_patience,
            )

    def after_pretraining_epoch(report: EpochReport) -> None:
        row = report.row
        log.info(
            "train: pretraining layer %d/%d, epoch %d/%d  reconstruction loss %.4f | val %.4f"
            "  (%.1fs)",
            row["layer"],
            model.pretrain_layers,
            row["epoch"],
            model.network.pretrain_epochs,
            row["loss"],
            row["val_loss"],
            report.seconds,
        )
        if tracker is not None:
            tracker.log_metrics(pretrain_metrics(row), step=int(row["epoch"]))

    fit(model, optimizer, params, train_set, val_set, state, after_epoch, shard)
    model.load_state_dict(state.best_state)
    result = TrainResult(
        model_path=model_path,
        device=str(device),
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss,
        best_val_accuracy=state.best_val_accuracy,
        stopped_early=state.stopped_early,
        seconds=round(time.perf_counter() - started, 2),
    )
    if not shard.is_main:
        return result  # rank 0 writes the model and the reports
    save_model(model_path, model, SavedModel(spec, state.best_epoch, state.epoch))
    write_history(reports_dir / HISTORY_FILE.name, state.history)
    write_json(
        reports_dir / SUMMARY_FILE.name,
        {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "best_val_loss": round(result.best_val_loss, 6),
            "best_val_accuracy": round(result.best_val_accuracy, 6),
            "stopped_early": result.stopped_early,
            # the last epoch's validation reconstruction loss of each pretrained layer
            **{
                f"pretrain_layer{int(row['layer'])}_val_loss": round(row["val_loss"], 6)
                for row in state.pretrain_history
            },
        },
    )
    if tracker is not None:
        log_model(tracker.run_id, model_path, val_set)
    log.info(
        "train: best epoch %d (val loss %.4f, val acc %.4f) -> %s in %.1fs",
        result.best_epoch,
        result.best_val_loss,
        result.best_val_accuracy,
        model_path,
        result.seconds,
    )
    return result


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    lines = [",".join(HISTORY_COLUMNS)]
    lines += [",".join(_csv_number(row[column]) for column in HISTORY_COLUMNS) for row in history]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _csv_number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


# For flows of your own: the training pipeline runs the stage through `dvc repro`.
train_task = task(name="train")(run_train)


def main() -> None:
    params = load_params()
    train = chosen_train_params(params)  # train.model, or the select stage's winner
    if train.processes > 1 and not under_torchrun():
        # this very module in train.processes processes; exec keeps the pid DVC waits on
        command = torchrun_command(train.processes, __spec__.name)
        log.info(
            "train: starting %d data-parallel processes: %s", train.processes, " ".join(command)
        )
        os.execv(command[0], command)
    shard = shard_from_env()
    try:
        if not shard.is_main:
            run_train(train)
            return
        with tracked_run(params, run_name=f"train-{train.model}") as tracker:
            if flow_mlflow_run_id() is None:  # under the flow, validation logged itself
                record_validations(tracker)  # what was checked of the data this model learns from
            if params.train.model == AUTO:  # what was trained, on the run the version records
                tracker.log_values(selected_values(train))
            run_train(train, tracker=tracker)
    finally:
        leave()


def selected_values(train: TrainParams) -> dict[str, object]:
    """``selected.*`` params: the family, its options and the optimiser's settings."""
    return {f"selected.{key}": value for key, value in fixed_choice(train).flat().items()}


if __name__ == "__main__":
    stage_main(main)
