"""What the training loop reports after each epoch: one record type per phase.

Fine-tuning epochs (:class:`TrainingEpoch`) are the lines of the training history; greedy
layer-wise pretraining epochs (:class:`PretrainingEpoch`, ``sae``) report a layer's
reconstruction loss. The loop calls its listener with either; the listener tells them apart by
type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tasks.training.checkpoint import TrainingState

# History rows (TrainingState.history) are dicts with these keys, as checkpoints store them.
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class TrainingEpoch:
    """One fine-tuning epoch: the scores of its line of the history."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float

    @classmethod
    def of_row(cls, row: Mapping[str, float], seconds: float) -> TrainingEpoch:
        return cls(
            int(row["epoch"]),
            row["train_loss"],
            row["train_accuracy"],
            row["val_loss"],
            row["val_accuracy"],
            seconds,
        )

    def scores(self) -> dict[str, float]:
        """The epoch's losses and accuracies by their history names (no epoch, no time)."""
        return {
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
        }


@dataclass(frozen=True)
class PretrainingEpoch:
    """One epoch of pretraining a layer (from 1): its reconstruction loss on train and val."""

    layer: int
    epoch: int  # within the layer, from 1
    loss: float
    val_loss: float
    seconds: float

    def row(self) -> dict[str, float]:
        """The epoch as TrainingState.pretrain_history (and its checkpoints) holds it."""
        return {
            "layer": self.layer,
            "epoch": self.epoch,
            "loss": self.loss,
            "val_loss": self.val_loss,
        }

    def metrics(self) -> dict[str, float]:
        """As MLflow metrics: ``pretrain_layer<N>_loss`` and ``..._val_loss``."""
        return {
            f"pretrain_layer{self.layer}_loss": self.loss,
            f"pretrain_layer{self.layer}_val_loss": self.val_loss,
        }


EpochReport = TrainingEpoch | PretrainingEpoch


# Called after every epoch of either phase, with the training state as it now is.
EpochListener = Callable[[TrainingState, EpochReport], None]
