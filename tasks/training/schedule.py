"""The learning-rate schedules of ``train.lr_schedule``, as functions of the position in
training alone (a resumed run picks the schedule up exactly)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tasks.core.config import TrainParams

ONECYCLE_WARMUP = 0.3  # the share of all steps spent rising to train.lr
ONECYCLE_START_DIV, ONECYCLE_END_DIV = 25.0, 1e4  # from lr/25 up to lr, down to lr/25/1e4


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
