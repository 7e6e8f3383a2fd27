"""train: fit a model from ``models/`` on the train split, early-stopping on validation loss.

Writes ``artifacts/model.pt`` (best weights plus everything needed to rebuild the model), a
checkpoint per epoch to ``artifacts/checkpoints/last.pt`` (atomically; ``train.resume`` continues
from it), and the per-epoch history to ``reports/``. Per-epoch metrics go to MLflow in one call
per epoch, never per step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from torch import nn

from tasks.artifacts import ImageDataset, atomic_path, file_md5, read_split, write_json
from tasks.config import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    PROCESSED_DIR,
    REPORTS_DIR,
    MlcycleError,
    TrainParams,
    load_params,
    retry_unless_user_error,
    stage_main,
)
from tasks.model_io import build_from_spec, log_model, predict_logits, save_model, torch_save
from tasks.tracking import RunTracker, flow_run_id, tracked_run
from tasks.validate import record_validations

log = logging.getLogger("mlcycle.train")

HISTORY_FILE = REPORTS_DIR / "training_history.csv"
SUMMARY_FILE = REPORTS_DIR / "train.json"
# No wall-clock column: outputs must depend on inputs only (DVC compares them by hash).
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
CHECKPOINT_FORMAT = 1


class CheckpointError(MlcycleError):
    """A checkpoint cannot be used to resume."""


class TrainingDiverged(MlcycleError):
    """The loss became NaN or infinite."""


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


@dataclass
class TrainingState:
    """Everything a resumed run needs; saved whole after every epoch."""

    epoch: int = 0
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    best_val_accuracy: float = 0.0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for a missing CUDA device is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise MlcycleError(
                f"train.device is {requested!r} but {count} CUDA device(s) are available; "
                "use auto, cpu" + (f" or cuda:0..cuda:{count - 1}" if count else "")
            )
    return device


def make_deterministic(seed: int, device: torch.device) -> None:
    """Seed every generator; on CUDA also pick deterministic kernels, so the same inputs give
    the same model file (DVC and the lineage records rely on it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cuda":
        # cuBLAS reads this when it first initialises; it must be set before any CUDA work.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(params: TrainParams, model: nn.Module) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=params.lr,
            momentum=params.momentum,
            weight_decay=params.weight_decay,
        )
    optimizer_class = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)


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
    device = resolve_device(params.device)
    make_deterministic(params.seed, device)
    spec = {
        "model": params.model,
        "options": params.model_options(),
        "input_shape": info["image_shape"],
        "class_names": info["class_names"],
        "mean": info["mean"],
        "std": info["std"],
    }
    model = build_from_spec(spec).to(device)
    optimizer = make_optimizer(params, model)
    fingerprint = _fingerprint(spec, params, processed_dir / "train.npz")
    checkpoint_path = checkpoint_dir / "last.pt"
    state = TrainingState()
    if params.resume:
        state = restore_checkpoint(checkpoint_path, fingerprint, model, optimizer, params)
    log.info(
        "train: %s on %s, %d train / %d val images, up to %d epochs%s",
        params.model,
        device,
        len(train_set.labels),
        len(val_set.labels),
        params.epochs,
        f" (resuming after epoch {state.epoch})" if state.epoch else "",
    )
    train_x, train_y = _to_device(train_set, device)
    val_x, val_y = _to_device(val_set, device)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(state.epoch + 1, params.epochs + 1):
        if state.stopped_early:
            break
        epoch_started = time.perf_counter()
        order = torch.randperm(
            len(train_y), generator=torch.Generator().manual_seed(params.seed * 100_003 + epoch)
        ).to(device)
        train_loss, train_accuracy = _train_epoch(
            model, optimizer, loss_fn, train_x[order], train_y[order], params.batch_size
        )
        val_loss, val_accuracy = score(model, val_x, val_y, params.batch_size, loss_fn)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingDiverged(
                f"training diverged in epoch {epoch} (train loss {train_loss}, val loss "
                f"{val_loss}); lower train.lr (now {params.lr})"
            )
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
        }
        seconds = time.perf_counter() - epoch_started
        _advance(state, row, model, params.early_stopping_patience)
        save_checkpoint(checkpoint_path, state, fingerprint, model, optimizer)
        log.info(
            "train: epoch %d/%d  loss %.4f acc %.4f | val loss %.4f acc %.4f  (%.1fs)%s",
            epoch,
            params.epochs,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            seconds,
            "  best" if state.best_epoch == epoch else "",
        )
        if tracker is not None:
            tracker.log_metrics(
                {key: value for key, value in row.items() if key != "epoch"}
                | {"epoch_seconds": seconds},
                step=epoch,
            )
        if state.stopped_early:
            log.info(
                "train: early stop, val loss has not improved for %d epochs",
                params.early_stopping_patience,
            )

    model.load_state_dict(state.best_state)
    save_model(model_path, spec, model, best_epoch=state.best_epoch, epochs_run=state.epoch)
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
    write_history(reports_dir / HISTORY_FILE.name, state.history)
    write_json(
        reports_dir / SUMMARY_FILE.name,
        {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "best_val_loss": round(result.best_val_loss, 6),
            "best_val_accuracy": round(result.best_val_accuracy, 6),
            "stopped_early": result.stopped_early,
        },
    )
    if tracker is not None:
        log_model(tracker.run_id, model, val_set, model_path)
    log.info(
        "train: best epoch %d (val loss %.4f, val acc %.4f) -> %s in %.1fs",
        result.best_epoch,
        result.best_val_loss,
        result.best_val_accuracy,
        model_path,
        result.seconds,
    )
    return result


def _to_device(dataset: ImageDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Images stay uint8 on the device (4x less memory and transfer); the model casts per batch.
    return (
        torch.from_numpy(dataset.images).to(device),
        torch.from_numpy(dataset.labels).to(device),
    )


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
) -> tuple[float, float]:
    model.train()
    total_loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for batch in _batches(len(labels), batch_size):
        batch_x, batch_y = images[batch], labels[batch]
        optimizer.zero_grad(set_to_none=True)
        logits = model(batch_x)
        loss = loss_fn(logits, batch_y)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: one host sync per epoch, not per step.
        total_loss += loss.detach() * len(batch_y)
        correct += (logits.argmax(dim=1) == batch_y).sum()
    return total_loss.item() / len(labels), correct.item() / len(labels)


def _batches(count: int, batch_size: int) -> list[slice]:
    """Consecutive slices; a trailing batch of one joins the previous one (batch norm needs 2)."""
    starts = list(range(0, count, batch_size))
    if len(starts) > 1 and count - starts[-1] == 1:
        starts.pop()
    return [slice(start, end) for start, end in zip(starts, [*starts[1:], count], strict=True)]


def score(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    loss_fn: nn.Module,
) -> tuple[float, float]:
    logits = predict_logits(model, images, max(batch_size, 256))
    return (loss_fn(logits, labels).item(), (logits.argmax(dim=1) == labels).float().mean().item())


def _advance(
    state: TrainingState, row: dict[str, float], model: nn.Module, patience: int | None
) -> None:
    state.epoch = int(row["epoch"])
    state.history.append(row)
    if row["val_loss"] < state.best_val_loss:
        state.best_val_loss = row["val_loss"]
        state.best_val_accuracy = row["val_accuracy"]
        state.best_epoch = state.epoch
        state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state.epochs_without_improvement = 0
    else:
        state.epochs_without_improvement += 1
        state.stopped_early = patience is not None and state.epochs_without_improvement >= patience


def _fingerprint(spec: dict[str, Any], params: TrainParams, train_file: Path) -> str:
    """What a checkpoint must match to be resumed: the model, the optimiser and the data.

    The learning rate, weight decay and momentum may change on resume (fine-tuning); the
    resumed run uses the current values.
    """
    digest = hashlib.sha256(
        json.dumps(
            {
                "spec": spec,
                "optimizer": params.optimizer,
                "batch_size": params.batch_size,
                "seed": params.seed,
            },
            sort_keys=True,
        ).encode()
    )
    digest.update(file_md5(train_file).encode())
    return digest.hexdigest()


def save_checkpoint(
    path: Path,
    state: TrainingState,
    fingerprint: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "state": dict(vars(state)),
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        path,
    )


def restore_checkpoint(
    path: Path,
    fingerprint: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: TrainParams,
) -> TrainingState:
    if not path.is_file():
        log.info("train: resume asked but %s does not exist; starting from epoch 1", path)
        return TrainingState()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: cannot be read ({error}); set train.resume=false to start over"
        ) from None
    if checkpoint.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path}: was written for another model, optimiser or training data; "
            "set train.resume=false to start over"
        )
    model.load_state_dict(checkpoint["model_state"])
    optimizer.load_state_dict(checkpoint["optimizer_state"])
    # load_state_dict brings back the old hyper-parameters; the current params.yaml wins.
    for group in optimizer.param_groups:
        group["lr"] = params.lr
        group["weight_decay"] = params.weight_decay
        if "momentum" in group:
            group["momentum"] = params.momentum
    torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    return TrainingState(**checkpoint["state"])


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    lines = [",".join(HISTORY_COLUMNS)]
    lines += [",".join(_csv_number(row[column]) for column in HISTORY_COLUMNS) for row in history]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _csv_number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


train_task = task(
    name="train", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_user_error
)(run_train)


def main() -> None:
    params = load_params()
    with tracked_run(params, run_name=f"train-{params.train.model}") as tracker:
        if flow_run_id() is None:  # under the flow, validation logged itself
            record_validations(tracker)  # what was checked of the data this model learns from
        run_train(params.train, tracker=tracker)


if __name__ == "__main__":
    stage_main(main)
