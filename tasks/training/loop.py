"""The training loop: data kept on the device (or streamed from pinned host memory when it does
not fit), batches by indexing, one host sync per epoch, early stopping on validation loss. The
train stage and the select stage's trials call :func:`fit`.

One loop for every family: a model's own objective (``Classifier.training_loss``), gradient
clipping (``grad_clip``) and greedy layer-wise pretraining (``pretrain_layers``) are asked of
the model, never special-cased by name. On CUDA the forward pass runs under bf16 autocast and
the optimiser is fused (``train.precision``, ``make_optimizer``); ``train.compile`` compiles
the training step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from models import Classifier
from tasks.core.config import TrainParams
from tasks.core.errors import MlcycleError
from tasks.core.files import ImageDataset
from tasks.core.model_file import predict_logits
from tasks.core.model_spec import ModelSpec
from tasks.training.augment import draw_augmentation, take
from tasks.training.checkpoint import TrainingState
from tasks.training.device import (
    autocast,
    autocast_dtype,
    make_deterministic,
    prepare_model,
    resolve_device,
)
from tasks.training.distributed import SINGLE, Shard, join, parallel_step
from tasks.training.epochs import EpochListener, PretrainingEpoch, TrainingEpoch
from tasks.training.placement import PlacedData, batches, epoch_batches, place_data
from tasks.training.schedule import epoch_learning_rate, set_learning_rate, step_schedule

# Validation (and a layer's reconstruction check) runs in batches of at least this many
# images: no gradients are kept, so larger batches than training's fit and run faster.
MIN_EVAL_BATCH = 256
# Each epoch's shuffle and augmentation draws come from a generator seeded by the position in
# training alone, so a resumed run draws what an unbroken one would: fine-tuning epoch e of seed
# s uses s * SEED_STRIDE + e; pretraining layer l (from 1) adds LAYER_SEED_STRIDE * l, apart
# from every fine-tuning epoch's.
SEED_STRIDE = 100_003
LAYER_SEED_STRIDE = 1_000


class TrainingDiverged(MlcycleError):
    """The loss became NaN or infinite."""


def start_training(
    spec: ModelSpec, params: TrainParams, shard: Shard = SINGLE
) -> tuple[Classifier, torch.optim.Optimizer, torch.device]:
    """A fresh model built from ``spec`` on ``train.device``, seeded (every run and every trial
    starts alike, whatever ran before), and its optimiser. A data-parallel process joins its
    group first and trains on its own GPU."""
    device = resolve_device(params.device)
    if shard.parallel:
        device = join(shard, device)
    make_deterministic(params.seed, device, params.deterministic)
    model = prepare_model(spec.build(), device)
    return model, make_optimizer(params, model), device


def make_optimizer(params: TrainParams, model: nn.Module) -> torch.optim.Optimizer:
    # Fused kernels (one launch for all parameters) where the parameters live on CUDA.
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=params.lr,
            momentum=params.momentum,
            weight_decay=params.weight_decay,
            **fused,
        )
    optimizer_class = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, **fused
    )


def train_epoch(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batches_of_epoch: Iterator[tuple[torch.Tensor, torch.Tensor]],
    count: int,
    step: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    learning_rate: Callable[[int], float] | None = None,
    precision: torch.dtype | None = None,
) -> tuple[float, float]:
    """One pass over the data; the loss is the model's whole objective (for an autoencoder it
    includes the reconstruction), the accuracy that of its logits. ``step`` is the forward pass
    (``model.training_loss``, perhaps compiled), ``learning_rate`` the rate for each step
    number (a per-step schedule), ``precision`` the autocast dtype (None: fp32)."""
    model.train()
    step = step or model.training_loss
    device = next(model.parameters()).device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    clip = model.grad_clip
    for number, (batch_x, batch_y) in enumerate(batches_of_epoch):
        if learning_rate is not None:
            set_learning_rate(optimizer, learning_rate(number))
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss, logits = step(batch_x, batch_y, loss_fn)
        loss.backward()
        if clip is not None:  # recurrent nets: one long product of Jacobians can explode
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        # Accumulate on the device: one host sync per epoch, not per step.
        total_loss += loss.detach().float() * len(batch_y)
        correct += (logits.argmax(dim=1) == batch_y).sum()
    return total_loss.item() / count, correct.item() / count


def score(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    loss_fn: nn.Module,
) -> tuple[float, float]:
    """Validation in fp32 whatever the training precision: early stopping and selection judge
    these numbers."""
    logits = predict_logits(model, images, max(batch_size, MIN_EVAL_BATCH))
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


def epoch_generator(seed: int, epoch: int, layer: int | None = None) -> torch.Generator:
    """The generator of an epoch's shuffle and augmentation draws (``SEED_STRIDE``); ``layer``
    (from 0) for a pretraining epoch."""
    offset = 0 if layer is None else LAYER_SEED_STRIDE * (layer + 1)
    return torch.Generator().manual_seed(seed * SEED_STRIDE + offset + epoch)


@dataclass(frozen=True)
class FineTuning:
    """What every fine-tuning epoch of one :func:`fit` shares."""

    model: Classifier
    optimizer: torch.optim.Optimizer
    params: TrainParams
    train: PlacedData
    val: PlacedData
    shard: Shard
    step: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    precision: torch.dtype | None
    positions: torch.Tensor  # this process's share of each epoch's order
    batch_size: int  # per process

    @property
    def steps(self) -> int:
        return len(batches(len(self.positions), self.batch_size))


def fit(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    params: TrainParams,
    train_set: ImageDataset,
    val_set: ImageDataset,
    state: TrainingState,
    on_epoch: EpochListener,
    shard: Shard = SINGLE,
) -> TrainingState:
    """Pretrain what is left of the model's layers (if it has any), then train from
    ``state.epoch + 1`` to ``params.epochs`` or an early stop. ``state`` is advanced in place
    and ``on_epoch`` called after every epoch of either phase (checkpoint, logs, MLflow).

    With a ``shard`` of several processes (``tasks.training.distributed``), this process trains
    on its share of each epoch under DDP. Pretraining is not split: every process runs all of
    it alike, and DDP starts every process from rank 0's weights after it."""
    device = next(model.parameters()).device
    train, val = place_data([train_set, val_set], device, params.data_placement)
    pretrain(model, params, train.images, val.images, state, on_epoch)
    step = parallel_step(model, shard) if shard.parallel else model.training_loss
    tuning = FineTuning(
        model,
        optimizer,
        params,
        train,
        val,
        shard,
        torch.compile(step) if params.compile else step,
        autocast_dtype(params, device),
        shard.positions(len(train)),
        shard.per_process_batch(params.batch_size),
    )
    for epoch in range(state.epoch + 1, params.epochs + 1):
        if state.stopped_early:
            break
        started = time.perf_counter()
        row = fine_tune_epoch(tuning, epoch)
        advance(state, row, model, params.early_stopping_patience)
        on_epoch(state, TrainingEpoch.of_row(row, time.perf_counter() - started))
    return state


def fine_tune_epoch(tuning: FineTuning, epoch: int) -> dict[str, float]:
    """Train one epoch and score it on validation: its line of the history."""
    params, shard = tuning.params, tuning.shard
    device = next(tuning.model.parameters()).device
    set_learning_rate(tuning.optimizer, epoch_learning_rate(params, epoch))
    generator = epoch_generator(params.seed, epoch)
    order = torch.randperm(len(tuning.train), generator=generator)
    augmentation = draw_augmentation(
        len(tuning.train), params.augment_shift, params.augment_flip, generator
    )
    if shard.parallel:  # the same order and draws on every process; each takes its share
        order, augmentation = order[tuning.positions], take(augmentation, tuning.positions)
    train_loss, train_accuracy = train_epoch(
        tuning.model,
        tuning.optimizer,
        nn.CrossEntropyLoss(label_smoothing=params.label_smoothing),
        epoch_batches(tuning.train, order, augmentation, tuning.batch_size, device),
        len(order),
        tuning.step,
        step_schedule(params, epoch, tuning.steps),
        tuning.precision,
    )
    train_loss, train_accuracy = shard.mean_of_epoch(train_loss, train_accuracy, len(order))
    # early stopping and selection judge the plain loss, without label smoothing
    val_loss, val_accuracy = shard.from_main(
        *score(
            tuning.model,
            tuning.val.images,
            tuning.val.labels,
            params.batch_size,
            nn.CrossEntropyLoss(),
        )
    )
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        raise TrainingDiverged(
            f"training diverged in epoch {epoch} (train loss {train_loss}, val loss "
            f"{val_loss}); lower train.lr (now {params.lr})"
        )
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
    }


def pretrain(
    model: Classifier,
    params: TrainParams,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    state: TrainingState,
    on_epoch: EpochListener,
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
            generator = epoch_generator(params.seed, epoch, layer)
            order = torch.randperm(len(train_x), generator=generator).to(train_x.device)
            loss = _pretrain_epoch(model, optimizer, layer, train_x[order], params.batch_size)
            val_loss = _reconstruction_loss(
                model, layer, val_x, max(params.batch_size, MIN_EVAL_BATCH)
            )
            if not (math.isfinite(loss) and math.isfinite(val_loss)):
                raise TrainingDiverged(
                    f"pretraining layer {layer + 1} diverged in epoch {epoch} (loss {loss}); "
                    f"lower train.{params.model}.pretrain_lr"
                )
            report = PretrainingEpoch(layer + 1, epoch, loss, val_loss, 0.0)
            state.pretrain_epoch += 1
            state.pretrain_history.append(report.row())
            state.pretrain_optimizer_state = {} if epoch == per_layer else optimizer.state_dict()
            on_epoch(state, replace(report, seconds=time.perf_counter() - started))


def _pretrain_epoch(
    model: Classifier, optimizer: torch.optim.Optimizer, layer: int, images: torch.Tensor, size: int
) -> float:
    model.train()
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    for batch in batches(len(images), size):
        optimizer.zero_grad(set_to_none=True)
        loss = model.pretrain_loss(images[batch].to(device, non_blocking=True), layer)
        loss.backward()
        optimizer.step()
        total += loss.detach() * (batch.stop - batch.start)
    return total.item() / len(images)


@torch.no_grad()
def _reconstruction_loss(model: Classifier, layer: int, images: torch.Tensor, size: int) -> float:
    model.eval()
    device = next(model.parameters()).device
    total = sum(
        model.pretrain_loss(images[b].to(device), layer) * (b.stop - b.start)
        for b in batches(len(images), size)
    )
    return float(total) / len(images)
