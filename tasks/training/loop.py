"""The training loop: data kept on the device, batches by indexing, one host sync per epoch,
early stopping on validation loss. The train stage and the select stage's trials call :func:`fit`.

One loop for every family: a model's own objective (``Classifier.training_loss``), gradient
clipping (``grad_clip``) and greedy layer-wise pretraining (``pretrain_layers``) are asked of
the model, never special-cased by name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from models import Classifier
from tasks.core.config import TrainParams
from tasks.core.errors import MlcycleError
from tasks.core.files import ImageDataset
from tasks.core.model_file import predict_logits
from tasks.training.augment import random_shift
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


def epoch_learning_rate(params: TrainParams, epoch: int) -> float:
    """``constant``: train.lr throughout; ``cosine``: from train.lr down to 0 over train.epochs
    along half a cosine (computed from the epoch, so a resumed run picks it up exactly)."""
    if params.lr_schedule == "constant":
        return params.lr
    return params.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / params.epochs))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def to_device(dataset: ImageDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Images stay uint8 on the device (4x less memory and transfer); the model casts per batch.
    return (
        torch.from_numpy(dataset.images).to(device),
        torch.from_numpy(dataset.labels).to(device),
    )


def train_epoch(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
) -> tuple[float, float]:
    """One pass over the data; the loss is the model's whole objective (for an autoencoder it
    includes the reconstruction), the accuracy that of its logits."""
    model.train()
    total_loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    clip = model.grad_clip
    for batch in batches(len(labels), batch_size):
        batch_x, batch_y = images[batch], labels[batch]
        optimizer.zero_grad(set_to_none=True)
        loss, logits = model.training_loss(batch_x, batch_y, loss_fn)
        loss.backward()
        if clip is not None:  # recurrent nets: one long product of Jacobians can explode
            nn.utils.clip_grad_norm_(model.parameters(), clip)
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


PRETRAIN = "pretrain"
FINE_TUNE = "train"


@dataclass(frozen=True)
class EpochReport:
    # train: epoch, train/val loss and accuracy (a line of the history);
    # pretrain: layer, epoch (within the layer), loss and val_loss (reconstruction)
    row: dict[str, float]
    seconds: float
    phase: str = FINE_TUNE


def fit(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    params: TrainParams,
    train_set: ImageDataset,
    val_set: ImageDataset,
    state: TrainingState,
    on_epoch: Callable[[TrainingState, EpochReport], None],
) -> TrainingState:
    """Pretrain what is left of the model's layers (if it has any), then train from
    ``state.epoch + 1`` to ``params.epochs`` or an early stop. ``state`` is advanced in place
    and ``on_epoch`` called after every epoch of either phase (checkpoint, logs, MLflow)."""
    device = next(model.parameters()).device
    train_x, train_y = to_device(train_set, device)
    val_x, val_y = to_device(val_set, device)
    pretrain(model, params, train_x, val_x, state, on_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()  # early stopping and selection judge the plain loss
    for epoch in range(state.epoch + 1, params.epochs + 1):
        if state.stopped_early:
            break
        started = time.perf_counter()
        set_learning_rate(optimizer, epoch_learning_rate(params, epoch))
        generator = torch.Generator().manual_seed(params.seed * 100_003 + epoch)
        order = torch.randperm(len(train_y), generator=generator).to(device)
        epoch_x = random_shift(train_x[order], params.augment_shift, generator)
        train_loss, train_accuracy = train_epoch(
            model, optimizer, loss_fn, epoch_x, train_y[order], params.batch_size
        )
        val_loss, val_accuracy = score(model, val_x, val_y, params.batch_size, val_loss_fn)
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


def pretrain(
    model: Classifier,
    params: TrainParams,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    state: TrainingState,
    on_epoch: Callable[[TrainingState, EpochReport], None],
) -> None:
    """Greedy layer-wise pretraining: each layer learns to reconstruct the (frozen) codes of the
    layers below it, for ``pretrain_epochs`` epochs, with its own Adam optimiser. Resumes at
    ``state.pretrain_epoch``; the layer's optimiser state travels in ``state``."""
    layers = model.pretrain_layers
    per_layer = getattr(model.network, "pretrain_epochs", 0)
    while state.pretrain_epoch < layers * per_layer:
        layer, done = divmod(state.pretrain_epoch, per_layer)
        optimizer = torch.optim.Adam(model.pretrain_parameters(layer), lr=model.network.pretrain_lr)
        if done and state.pretrain_optimizer_state:
            optimizer.load_state_dict(state.pretrain_optimizer_state)
        for epoch in range(done + 1, per_layer + 1):
            started = time.perf_counter()
            generator = torch.Generator().manual_seed(
                params.seed * 100_003 + 1_000 * (layer + 1) + epoch
            )
            order = torch.randperm(len(train_x), generator=generator).to(train_x.device)
            loss = _pretrain_epoch(model, optimizer, layer, train_x[order], params.batch_size)
            val_loss = _reconstruction_loss(model, layer, val_x, max(params.batch_size, 256))
            if not (math.isfinite(loss) and math.isfinite(val_loss)):
                raise TrainingDiverged(
                    f"pretraining layer {layer + 1} diverged in epoch {epoch} (loss {loss}); "
                    f"lower train.{params.model}.pretrain_lr"
                )
            row = {"layer": layer + 1, "epoch": epoch, "loss": loss, "val_loss": val_loss}
            state.pretrain_epoch += 1
            state.pretrain_history.append(row)
            state.pretrain_optimizer_state = {} if epoch == per_layer else optimizer.state_dict()
            on_epoch(state, EpochReport(row, time.perf_counter() - started, PRETRAIN))


def pretrain_metrics(row: dict[str, float]) -> dict[str, float]:
    """A pretraining row as MLflow metrics: ``pretrain_layer<N>_loss`` and ``..._val_loss``."""
    layer = int(row["layer"])
    return {
        f"pretrain_layer{layer}_loss": row["loss"],
        f"pretrain_layer{layer}_val_loss": row["val_loss"],
    }


def _pretrain_epoch(
    model: Classifier, optimizer: torch.optim.Optimizer, layer: int, images: torch.Tensor, size: int
) -> float:
    model.train()
    total = torch.zeros((), device=images.device)
    for batch in batches(len(images), size):
        optimizer.zero_grad(set_to_none=True)
        loss = model.pretrain_loss(images[batch], layer)
        loss.backward()
        optimizer.step()
        total += loss.detach() * (batch.stop - batch.start)
    return total.item() / len(images)


@torch.no_grad()
def _reconstruction_loss(model: Classifier, layer: int, images: torch.Tensor, size: int) -> float:
    model.eval()
    total = sum(
        model.pretrain_loss(images[b], layer) * (b.stop - b.start)
        for b in batches(len(images), size)
    )
    return float(total) / len(images)
