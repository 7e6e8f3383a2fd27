"""The ``train`` section: the engine's settings, the device and each family's options."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, create_model, field_validator

from tasks.core.config.base import Section, Seed
from tasks.core.config.families import FAMILY_OPTIONS, MODEL_NAMES

AUTO = "auto"  # train.model: auto -> the select stage picks the family and its options
LISTED_CUDA_DEVICES = 8  # cuda:0 .. cuda:7 in the form's list; params.yaml takes any cuda:N
DEVICE_CHOICES = ("auto", "cpu", "cuda", *(f"cuda:{index}" for index in range(LISTED_CUDA_DEVICES)))
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


# The engine's settings; TrainParams below adds a section per family (no docstring: the JSON
# schema, and so the Prefect form, would show it).
class _EngineParams(Section):
    # str + a validator, not a Literal: the error lists the families; the form gets the enum
    model: str = Field(
        description="A family of models/, or auto (the select stage chooses).",
        json_schema_extra={"enum": [AUTO, *MODEL_NAMES]},
    )
    optimizer: Literal["adam", "adamw", "sgd"] = Field(description="The optimiser.")
    lr: float = Field(gt=0, description="Learning rate (the peak under onecycle).")
    weight_decay: float = Field(ge=0, description="L2 penalty (decoupled for adamw).")
    momentum: float = Field(ge=0, lt=1, description="Used by sgd only.")
    batch_size: int = Field(ge=1, description="Images per step (split over train.processes).")
    epochs: int = Field(ge=1, description="Epochs at most (early stopping may end sooner).")
    seed: Seed = Field(description="Seed of the weights, the epoch order and the augmentation.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a better validation loss."
    )
    lr_schedule: Literal["constant", "cosine", "onecycle"] = Field(
        description="cosine: decay train.lr to 0 over train.epochs, epoch by epoch; onecycle: "
        "warm up to train.lr over the first 30% of the steps, then anneal, step by step."
    )
    label_smoothing: float = Field(
        ge=0, lt=1, description="Cross-entropy label smoothing while training (0: none)."
    )
    augment_shift: int = Field(
        ge=0, description="Shift training images by up to this many pixels (0: no augmentation)."
    )
    augment_flip: bool = Field(
        description="Mirror half the training images left-right each epoch (not for digits)."
    )
    deterministic: bool = Field(
        description="Deterministic kernels (bit-identical reruns); false on CUDA turns on cuDNN "
        "autotuning and TF32: faster, not reproducible to the bit."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        description="auto: bf16 autocast on CUDA, fp32 on CPU."
    )
    compile: bool = Field(description="torch.compile the training step (a warm-up on epoch 1).")
    data_placement: Literal["auto", "device", "host"] = Field(
        description="device: the data lives on the device; host: batches stream from (pinned) "
        "host memory; auto: the device while the data fits in a share of its free memory."
    )
    processes: int = Field(
        ge=1, description="Data-parallel processes; above 1 the stage runs under torchrun (DDP)."
    )
    device: str = Field(
        description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N",
        json_schema_extra={"enum": list(DEVICE_CHOICES)},
    )
    resume: bool = Field(description="Continue from artifacts/checkpoints/last.pt if present.")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value != AUTO and value not in MODEL_NAMES:
            raise ValueError(
                f"unknown model {value!r}; expected {AUTO} or one of {', '.join(MODEL_NAMES)}"
            )
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"unknown device {value!r}; expected auto, cpu, cuda or cuda:N")
        return value

    def options_of(self, family: str) -> dict[str, Any]:
        """A family's options from ``train.<family>``, as keyword arguments for its builder."""
        return dict(getattr(self, family).model_dump())

    def model_options(self) -> dict[str, Any]:
        """The chosen model's own options (a fixed ``train.model``)."""
        if self.model == AUTO:
            raise ValueError("train.model is auto: the select stage's choice holds the options")
        return self.options_of(self.model)


# train.<family> for each family of FAMILY_OPTIONS, in its order: a family registered there
# has its section here, in the form and in MLflow's params without another edit.
TrainParams = create_model(
    "TrainParams",
    __base__=_EngineParams,
    __module__=__name__,
    **{family: (options, ...) for family, options in FAMILY_OPTIONS.items()},
)
