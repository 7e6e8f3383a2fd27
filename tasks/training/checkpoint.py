"""Checkpoints: the whole training state after every epoch, written atomically, and resumed
only into the same model, optimiser and data.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.core.config import TrainParams
from tasks.core.errors import MlcycleError
from tasks.core.files import file_md5
from tasks.core.model_file import torch_save
from tasks.core.model_spec import ModelSpec

log = logging.getLogger("mlcycle.train")

CHECKPOINT_FORMAT = 1


class CheckpointError(MlcycleError):
    """A checkpoint cannot be used to resume."""


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
    # Greedy layer-wise pretraining (models with pretrain_layers): epochs done over all layers,
    # their rows, and the current layer's optimiser, so a run resumes mid-pretraining.
    pretrain_epoch: int = 0
    pretrain_history: list[dict[str, float]] = field(default_factory=list)
    pretrain_optimizer_state: dict[str, Any] = field(default_factory=dict)


def fingerprint(spec: ModelSpec, params: TrainParams, train_file: Path) -> str:
    """What a checkpoint must match to be resumed: the model, the optimiser and the data.

    The learning rate, weight decay and momentum may change on resume (fine-tuning); the
    resumed run uses the current values.
    """
    digest = hashlib.sha256(
        json.dumps(
            {
                "spec": spec.to_bundle(),
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
    # load_state_dict brings back the old hyper-parameters; the current params.yaml wins (the
    # learning rate too: fit sets it at the start of every epoch, from train.lr_schedule).
    for group in optimizer.param_groups:
        group["weight_decay"] = params.weight_decay
        if "momentum" in group:
            group["momentum"] = params.momentum
    torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    return TrainingState(**checkpoint["state"])
