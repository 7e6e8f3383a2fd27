"""The sections of the data and model stages besides ``train`` and ``select``: collect,
validate, preprocess, evaluate, and the registry's gate."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tasks.core.config.base import Section, Seed

SOURCE_PATTERN = re.compile(r"^(sklearn-digits|torchvision:[A-Za-z0-9_]+|folder:.+|npz:.+)$")


class CollectParams(Section):
    source: str = Field(
        # no <Name>: Prefect's V1 UI reads a description as HTML and drops the "tag"
        description="sklearn-digits, torchvision:NAME (MNIST, CIFAR10 ...), folder:PATH (a "
        "sub-folder of images per class) or npz:PATH (arrays images, labels)."
    )
    root: str = Field(description="Folder holding (or receiving) torchvision datasets.")
    download: bool = Field(description="Let torchvision download missing files.")
    feedback: bool = Field(
        description="Add the served images people labelled (data/external/feedback.npz)."
    )
    augment_to: int | None = Field(
        None,
        ge=1,
        description="sklearn-digits only: grow the 1,797 digits to this many 28x28 images "
        "(upscaled, random affine copies); null keeps the 8x8 originals.",
    )
    seed: Seed = Field(description="Seed of augment_to's random transforms.")

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if not SOURCE_PATTERN.match(value):
            raise ValueError(
                f"unknown source {value!r}; expected sklearn-digits, torchvision:<Name>, "
                "folder:<path> or npz:<path>"
            )
        return value

    @model_validator(mode="after")
    def _augment_digits_only(self) -> CollectParams:
        if self.augment_to is not None and self.source != "sklearn-digits":
            raise ValueError(
                f"augment_to is {self.augment_to} but source is {self.source!r}; augment_to "
                "grows the embedded sklearn-digits only (set it to null)"
            )
        return self


class ValidateParams(Section):
    min_rows: int = Field(ge=1, description="Fewer samples cannot train and test a model.")
    max_rows: int = Field(
        ge=1, description="More samples than this are refused (a runaway export)."
    )
    min_class_share: float = Field(ge=0, le=1, description="The rarest class's share at least.")
    max_blank_share: float = Field(ge=0, le=1, description="All-constant images' share at most.")

    @model_validator(mode="after")
    def _ordered_bounds(self) -> ValidateParams:
        if self.min_rows > self.max_rows:
            raise ValueError(f"min_rows {self.min_rows} is above max_rows {self.max_rows}")
        return self


class PreprocessParams(Section):
    seed: Seed = Field(description="Seed of the stratified split.")
    val_fraction: float = Field(
        gt=0, lt=1, description="Share of the samples in the validation split."
    )
    test_fraction: float = Field(gt=0, lt=1, description="Share of the samples in the test split.")
    image_size: int | None = Field(
        None, ge=1, description="Resize to a square of this side; null keeps."
    )
    channels: Literal[1, 3] | None = Field(
        None, description="Convert to 1 or 3 channels; null keeps."
    )

    @model_validator(mode="after")
    def _room_for_training(self) -> PreprocessParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction is {self.val_fraction + self.test_fraction:g}; "
                "expected below 1 so that a train split remains"
            )
        return self


class EvaluateParams(Section):
    baseline: Literal["logistic_regression", "svm", "none"] = Field(
        description="A scikit-learn model scored beside ours; svm is SVC(C=10), RBF kernel."
    )
    baseline_max_iter: int = Field(
        ge=1, description="Iterations of the baseline's solver (logistic regression), at most."
    )
    baseline_max_train_samples: int = Field(
        ge=1, description="Fit the baseline on at most this many train images (seeded sample)."
    )
    reference_rows: int = Field(
        ge=0,
        description="With served feedback in the data: the monitoring reference is the train "
        "and val images among its newest this-many (0: the whole split).",
    )


ScoreName = Literal["accuracy", "macro_f1"]


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class RegistryParams(Section):
    model_name: str = Field(
        pattern=MODEL_NAME_PATTERN, description="Registered model name in the MLflow registry."
    )
    metric: ScoreName = Field(description="The test metric a challenger must improve.")
    min_improvement: float = Field(
        ge=0, le=1, description="Beat the champion's metric by at least this much."
    )
    guard_metrics: Annotated[tuple[ScoreName, ...], Field(strict=False)] = Field(
        description="Test metrics a challenger must not make worse."
    )
    min_score: float = Field(
        ge=0, le=1, description="A champion must reach this metric value (also the first one)."
    )
    check_samples: int = Field(
        ge=1, description="Test images scored by the registered copy before it gets an alias."
    )
