"""The training loop: data kept on the device, batches by indexing, one host sync per epoch,
early stopping on validation loss. The train stage calls :func:`fit`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tasks.core.config import TrainParams
from tasks.core.errors import MlcycleError
from tasks.core.files import ImageDataset
from tasks.core.model_file import predict_logits
from tasks.training.checkpoint import TrainingState


class TrainingDiverged(MlcycleError):
    """The loss became NaN or infinite."""


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


def to_device(dataset: ImageDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Images stay uint8 on the device (4x less memory and transfer); the model casts per batch.
    return (
        torch.from_numpy(dataset.images).to(device),
        torch.from_numpy(dataset.labels).to(device),
    )


def train_epoch(
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
    for batch in batches(len(labels), batch_size):
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


def batches(count: int, batch_size: int) -> list[slice]:
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


def advance(
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


@dataclass(frozen=True)
class EpochReport:
    row: dict[str, float]  # epoch, train/val loss and accuracy: one line of the history
    seconds: float


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: TrainParams,
    train_set: ImageDataset,
    val_set: ImageDataset,
    state: TrainingState,
    on_epoch: Callable[[TrainingState, EpochReport], None],
) -> TrainingState:
    """Train from ``state.epoch + 1`` to ``params.epochs`` or an early stop; ``state`` is
    advanced in place and ``on_epoch`` called after every epoch (checkpoint, logs, MLflow)."""
    device = next(model.parameters()).device
    train_x, train_y = to_device(train_set, device)
    val_x, val_y = to_device(val_set, device)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(state.epoch + 1, params.epochs + 1):
        if state.stopped_early:
            break
        started = time.perf_counter()
        order = torch.randperm(
            len(train_y), generator=torch.Generator().manual_seed(params.seed * 100_003 + epoch)
        ).to(device)
        train_loss, train_accuracy = train_epoch(
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
        advance(state, row, model, params.early_stopping_patience)
        on_epoch(state, EpochReport(row, time.perf_counter() - started))
    return state
