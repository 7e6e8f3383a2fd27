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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from models import Classifier
from tasks.core.config import AUTO, TrainParams, load_params
from tasks.core.console import stage_main
from tasks.core.files import ImageDataset, atomic_path, read_split, write_json
from tasks.core.model_file import SavedModel, log_model, save_model
from tasks.core.model_spec import ModelSpec
from tasks.core.paths import CHECKPOINT_DIR, MODEL_FILE, PROCESSED_DIR, REPORTS_DIR
from tasks.core.stage_run import WithoutFlow, stage_run
from tasks.core.tracking import RunTracker, flow_mlflow_run_id
from tasks.training.checkpoint import (
    TrainingState,
    fingerprint,
    restore_checkpoint,
    save_checkpoint,
)
from tasks.training.choice import chosen_train_params, fixed_choice
from tasks.training.distributed import leave, shard_from_env, torchrun_command, under_torchrun
from tasks.training.epochs import HISTORY_COLUMNS, EpochReport, PretrainingEpoch, TrainingEpoch
from tasks.training.loop import fit, start_training
from tasks.validation.gate import record_validations

log = logging.getLogger("mlcycle.train")


HISTORY_FILE = REPORTS_DIR / "training_history.csv"


SUMMARY_FILE = REPORTS_DIR / "train.json"


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


# A listener of the live per-epoch reports (the main's MLflow logger); rank 0's only.
EpochCallback = Callable[[EpochReport], None]


@dataclass(frozen=True)
class TrainingData:
    """The splits the model learns from and is early-stopped on, and the spec they fix."""

    train_set: ImageDataset
    val_set: ImageDataset
    spec: ModelSpec

    @classmethod
    def read(cls, params: TrainParams, processed_dir: Path) -> TrainingData:
        train_set, info = read_split(processed_dir, "train")
        val_set, _ = read_split(processed_dir, "val")
        return cls(
            train_set, val_set, ModelSpec.for_split(params.model, params.model_options(), info)
        )


def run_train(
    params: TrainParams,
    processed_dir: Path = PROCESSED_DIR,
    model_path: Path = MODEL_FILE,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    reports_dir: Path = REPORTS_DIR,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train, write the model file and the reports (rank 0), and return how it went."""
    started = time.perf_counter()
    data = TrainingData.read(params, processed_dir)
    shard = shard_from_env()  # one process, or one of torchrun's (train.processes)
    model, optimizer, device = start_training(data.spec, params, shard)
    checkpoint = Checkpointing(
        checkpoint_dir / "last.pt",
        fingerprint(data.spec, params, processed_dir / "train.npz"),
        model,
        optimizer,
    )
    state = checkpoint.restore(params) if params.resume else TrainingState()
    if not shard.is_main:
        log.setLevel(logging.WARNING)  # rank 0 speaks for all processes
    log_start(params, data, str(device), shard.world if shard.parallel else 1, state.epoch)
    # rank 0 alone checkpoints, logs and writes; the others only train
    listener = MainProcessEpochs(params, checkpoint, on_epoch) if shard.is_main else ignore_epoch
    fit(model, optimizer, params, data.train_set, data.val_set, state, listener, shard)
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
    if shard.is_main:
        save_model(model_path, model, SavedModel(data.spec, state.best_epoch, state.epoch))
        write_reports(reports_dir, state)
        log_finish(result)
    return result


@dataclass(frozen=True)
class Checkpointing:
    """The per-epoch checkpoint of one training run (``train.resume`` continues from it)."""

    path: Path
    identity: str  # what a checkpoint must match to be resumed (checkpoint.fingerprint)
    model: Classifier
    optimizer: torch.optim.Optimizer

    def save(self, state: TrainingState) -> None:
        save_checkpoint(self.path, state, self.identity, self.model, self.optimizer)

    def restore(self, params: TrainParams) -> TrainingState:
        return restore_checkpoint(self.path, self.identity, self.model, self.optimizer, params)


@dataclass(frozen=True)
class MainProcessEpochs:
    """What rank 0 does after every epoch: checkpoint, say it, hand it to ``on_epoch``."""

    params: TrainParams
    checkpoint: Checkpointing
    on_epoch: EpochCallback | None

    def __call__(self, state: TrainingState, report: EpochReport) -> None:
        self.checkpoint.save(state)
        if isinstance(report, PretrainingEpoch):
            log_pretraining_epoch(self.checkpoint.model, report)
        else:
            log_epoch(self.params, state, report)
        if self.on_epoch is not None:
            self.on_epoch(report)


def ignore_epoch(state: TrainingState, report: EpochReport) -> None:
    """The other processes' listener: rank 0 speaks and writes for all of them."""


def log_start(
    params: TrainParams, data: TrainingData, device: str, processes: int, resumed_after: int
) -> None:
    log.info(
        "train: %s on %s, %d train / %d val images, up to %d epochs%s%s",
        params.model,
        device,
        len(data.train_set.labels),
        len(data.val_set.labels),
        params.epochs,
        f", {processes} data-parallel processes" if processes > 1 else "",
        f" (resuming after epoch {resumed_after})" if resumed_after else "",
    )


def log_epoch(params: TrainParams, state: TrainingState, report: TrainingEpoch) -> None:
    log.info(
        "train: epoch %d/%d  loss %.4f acc %.4f | val loss %.4f acc %.4f  (%.1fs)%s",
        report.epoch,
        params.epochs,
        report.train_loss,
        report.train_accuracy,
        report.val_loss,
        report.val_accuracy,
        report.seconds,
        "  best" if state.best_epoch == report.epoch else "",
    )
    if state.stopped_early:
        log.info(
            "train: early stop, val loss has not improved for %d epochs",
            params.early_stopping_patience,
        )


def log_pretraining_epoch(model: Classifier, report: PretrainingEpoch) -> None:
    log.info(
        "train: pretraining layer %d/%d, epoch %d/%d  reconstruction loss %.4f | val %.4f  (%.1fs)",
        report.layer,
        model.pretrain_layers,
        report.epoch,
        model.network.pretrain_epochs,
        report.loss,
        report.val_loss,
        report.seconds,
    )


def log_finish(result: TrainResult) -> None:
    log.info(
        "train: best epoch %d (val loss %.4f, val acc %.4f) -> %s in %.1fs",
        result.best_epoch,
        result.best_val_loss,
        result.best_val_accuracy,
        result.model_path,
        result.seconds,
    )


def write_reports(reports_dir: Path, state: TrainingState) -> None:
    """The history (a line per epoch) and the summary (``train.json``)."""
    write_history(reports_dir / HISTORY_FILE.name, state.history)
    write_json(
        reports_dir / SUMMARY_FILE.name,
        {
            "best_epoch": state.best_epoch,
            "epochs_run": state.epoch,
            "best_val_loss": round(state.best_val_loss, 6),
            "best_val_accuracy": round(state.best_val_accuracy, 6),
            "stopped_early": state.stopped_early,
            # the last epoch's validation reconstruction loss of each pretrained layer
            **{
                f"pretrain_layer{int(row['layer'])}_val_loss": round(row["val_loss"], 6)
                for row in state.pretrain_history
            },
        },
    )


def epoch_logger(tracker: RunTracker) -> EpochCallback:
    """The live per-epoch MLflow callback: one batched call per epoch, at the epoch's step."""

    def log_metrics(report: EpochReport) -> None:
        if isinstance(report, PretrainingEpoch):
            tracker.log_metrics(report.metrics(), step=report.epoch)
        else:
            tracker.log_metrics(
                report.scores() | {"epoch_seconds": report.seconds}, step=report.epoch
            )

    return log_metrics


def record_training(
    tracker: RunTracker, model_path: Path = MODEL_FILE, processed_dir: Path = PROCESSED_DIR
) -> None:
    """Log the model file the stage wrote to the run, as a pyfunc model with validation images
    as its input example (and tag the run with the file's hash)."""
    log_model(tracker.run_id, model_path, read_split(processed_dir, "val")[0])


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    lines = [",".join(HISTORY_COLUMNS)]
    lines += [",".join(_csv_number(row[column]) for column in HISTORY_COLUMNS) for row in history]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _csv_number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


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
    try:
        if not shard_from_env().is_main:
            run_train(train)  # rank 0 records for all processes
            return
        with stage_run(params, f"train-{train.model}", WithoutFlow.OWN_RUN) as tracker:
            if flow_mlflow_run_id() is None:  # under the flow, validation logged itself
                record_validations(tracker)  # what was checked of the data this model learns from
            if params.train.model == AUTO:  # what was trained, on the run the version records
                tracker.log_values(selected_values(train))
            run_train(train, on_epoch=epoch_logger(tracker))
            record_training(tracker)
    finally:
        leave()


def selected_values(train: TrainParams) -> dict[str, object]:
    """``selected.*`` params: the family, its options and the optimiser's settings."""
    return {f"selected.{key}": value for key, value in fixed_choice(train).flat().items()}


if __name__ == "__main__":
    stage_main(main)
