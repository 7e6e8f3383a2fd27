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
from dataclasses import dataclass

import torch
from torch import nn

from models import Classifier
from tasks.core.config import TrainParams
from tasks.core.errors import MlcycleError
from tasks.core.files import ImageDataset
from tasks.core.model_file import predict_logits
from tasks.core.model_spec import ModelSpec
from tasks.training.augment import Augmentation, draw_augmentation, take
from tasks.training.checkpoint import TrainingState
from tasks.training.device import (
    autocast,
    autocast_dtype,
    make_deterministic,
    prepare_model,
    resolve_device,
)
from tasks.training.distributed import SINGLE, Shard, join, parallel_step

# The training and validation images stay on the GPU while they take at most this share of its
# free memory; beyond it they stream from pinned host memory (the rest is for activations).
DEVICE_DATA_SHARE = 0.5
ONECYCLE_WARMUP = 0.3  # the share of all steps spent rising to train.lr
ONECYCLE_START_DIV, ONECYCLE_END_DIV = 25.0, 1e4  # from lr/25 up to lr, down to lr/25/1e4


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


def epoch_learning_rate(params: TrainParams, epoch: int, progress: float = 0.0) -> float:
    """The learning rate ``progress`` (0..1) of the way through ``epoch`` (from 1), computed
    from the position alone, so a resumed run picks the schedule up exactly. ``constant``:
    train.lr throughout; ``cosine``: from train.lr down to 0 over train.epochs along half a
    cosine, one value per epoch; ``onecycle``: step by step, a cosine rise from lr/25 to lr over
    the first 30% of training, then a cosine fall to lr/25/1e4 (large-batch training)."""
    if params.lr_schedule == "constant":
        return params.lr
    if params.lr_schedule == "cosine":
        return params.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / params.epochs))
    position = (epoch - 1 + progress) / params.epochs
    low = params.lr / ONECYCLE_START_DIV
    if position < ONECYCLE_WARMUP:
        return _cosine_between(low, params.lr, position / ONECYCLE_WARMUP)
    end = low / ONECYCLE_END_DIV
    return _cosine_between(params.lr, end, (position - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP))


def step_schedule(params: TrainParams, epoch: int, steps: int) -> Callable[[int], float] | None:
    """The learning rate of each step of ``epoch`` for a per-step schedule; None when the rate
    is set once per epoch."""
    if params.lr_schedule != "onecycle":
        return None
    return lambda number: epoch_learning_rate(params, epoch, number / steps)


def _cosine_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class PlacedData:
    """A split ready for training: labels on the device; images on the device too, or in
    (pinned) host memory to be copied in batch by batch."""

    images: torch.Tensor
    labels: torch.Tensor
    on_device: bool

    def __len__(self) -> int:
        return len(self.labels)


def data_fits_on_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # the CPU's "device" memory is the host memory the data is already in
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_DATA_SHARE * free


def place_data(
    datasets: list[ImageDataset], device: torch.device, placement: str
) -> list[PlacedData]:
    """Each dataset on ``device`` (``train.data_placement``: device, host, or auto: the device
    while all of them together fit in its share of free memory). Images stay uint8 (4x less
    memory and transfer than float); the model casts per batch."""
    nbytes = sum(dataset.images.nbytes for dataset in datasets)
    on_device = placement == "device" or (
        placement == "auto" and data_fits_on_device(nbytes, device)
    )
    placed = []
    for dataset in datasets:
        images = torch.from_numpy(dataset.images)
        if on_device:
            images = images.to(device)
        elif device.type == "cuda":
            images = images.pin_memory()  # page-locked: copies to the GPU run asynchronously
        placed.append(PlacedData(images, torch.from_numpy(dataset.labels).to(device), on_device))
    return placed


def epoch_batches(
    data: PlacedData,
    order: torch.Tensor,
    augmentation: Augmentation,
    batch_size: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's (images, labels) batches on ``device``, in ``order`` (a CPU index tensor),
    augmented there, batch by batch: a copy of the whole epoch would double the train split's
    memory (on a GPU, where ``auto`` placement lets the data take half the free memory, past
    what is there). Resident data is gathered by indexing; streamed data into one of two pinned
    buffers and copied without blocking, so the host prepares the next batch while the device
    trains on this one."""
    rows_on_device = order.to(device)
    labels = data.labels[rows_on_device]
    rows_where_the_images_are = rows_on_device if data.on_device else order
    pinned = not data.on_device and device.type == "cuda"
    buffers = [
        torch.empty((batch_size + 1, *data.images.shape[1:]), dtype=data.images.dtype).pin_memory()
        for _ in range(2 if pinned else 0)
    ]
    copied: list[torch.cuda.Event | None] = [None, None]
    for number, batch in enumerate(batches(len(order), batch_size)):
        if not pinned:
            images = data.images[rows_where_the_images_are[batch]]
        else:
            rows = order[batch]
            slot = number % 2
            if copied[slot] is not None:
                copied[slot].synchronize()  # the copy out of this buffer has finished
            buffer = buffers[slot][: len(rows)]
            torch.index_select(data.images, 0, rows, out=buffer)
            images = buffer.to(device, non_blocking=True)
            copied[slot] = torch.cuda.Event()
            copied[slot].record()
        yield augmentation.apply(images, batch), labels[batch]


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
    """Validation in fp32 whatever the training precision: early stopping and selection judge
    these numbers."""
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
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()  # early stopping and selection judge the plain loss
    precision = autocast_dtype(params, device)
    step = parallel_step(model, shard) if shard.parallel else model.training_loss
    step = torch.compile(step) if params.compile else step
    positions = shard.positions(len(train))
    batch_size = shard.per_process_batch(params.batch_size)
    steps = len(batches(len(positions), batch_size))
    for epoch in range(state.epoch + 1, params.epochs + 1):
        if state.stopped_early:
            break
        started = time.perf_counter()
        set_learning_rate(optimizer, epoch_learning_rate(params, epoch))
        generator = torch.Generator().manual_seed(params.seed * 100_003 + epoch)
        order = torch.randperm(len(train), generator=generator)
        augmentation = draw_augmentation(
            len(train), params.augment_shift, params.augment_flip, generator
        )
        if shard.parallel:  # the same order and draws on every process; each takes its share
            order, augmentation = order[positions], take(augmentation, positions)
        train_loss, train_accuracy = train_epoch(
            model,
            optimizer,
            loss_fn,
            epoch_batches(train, order, augmentation, batch_size, device),
            len(order),
            step,
            step_schedule(params, epoch, steps),
            precision,
        )
        train_loss, train_accuracy = shard.mean_of_epoch(train_loss, train_accuracy, len(order))
        val_loss, val_accuracy = shard.from_main(
            *score(model, val.images, val.labels, params.batch_size, val_loss_fn)
        )
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
