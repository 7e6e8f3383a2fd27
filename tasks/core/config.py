"""Typed, frozen parameters loaded once from ``params.yaml``, and the one writer of that file.

Every stage reads its section through :func:`load_params`; nothing else parses the YAML.
Unknown keys and wrong types fail with a message naming the dotted key at fault.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from ruamel.yaml import YAML, YAMLError

from tasks.core.console import run_logger
from tasks.core.errors import MlcycleError
from tasks.core.files import atomic_path
from tasks.core.paths import PARAMS_FILE


class ConfigError(MlcycleError):
    """``params.yaml`` or an override is invalid."""


# A tuple field accepts a YAML/JSON list; the rest of each model stays strict (no "3" for 3).
PositiveInts = Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(strict=False, min_length=1)]


Seed = Annotated[int, Field(ge=0)]


def _form_schema(schema: dict[str, Any]) -> None:
    """Shape a section's JSON schema for Prefect's Custom run form (the flow's parameters).

    The form renders ``anyOf [T, null]`` as tabs whose null tab only reads 'Property is type
    "None"'. A nullable field becomes plain ``T``, optional and without a default: its input
    left empty (or its "Omit value") is null, which Prefect's server accepts for an optional
    field (``preprocess_schema`` turns it back into ``anyOf [T, null]`` when validating)
    and the model reads as its default, None.
    """
    required = schema.get("required", [])
    for name, prop in schema.get("properties", {}).items():
        branches = prop.get("anyOf", [])
        if len(branches) != 2 or NULL_SCHEMA not in branches:
            continue
        (value,) = [branch for branch in branches if branch != NULL_SCHEMA]
        del prop["anyOf"]
        prop.pop("default", None)
        prop.update(value)
        if "enum" in prop:  # the form then shows a number box, not a select: null must pass
            prop["enum"] = [*prop["enum"], None]
        prop["description"] = f"{prop.get('description', '')} Empty: null.".lstrip()
        if name in required:
            required.remove(name)


NULL_SCHEMA = {"type": "null"}


class _Section(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        json_schema_extra=_form_schema,
        field_title_generator=lambda name, _: name,  # the form's labels: params.yaml's keys
    )


SOURCE_PATTERN = re.compile(r"^(sklearn-digits|torchvision:[A-Za-z0-9_]+|folder:.+|npz:.+)$")


class CollectParams(_Section):
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


class ValidateParams(_Section):
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


class PreprocessParams(_Section):
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


class MLPParams(_Section):
    hidden_sizes: PositiveInts = Field(description="Widths of the hidden layers.")
    dropout: float = Field(ge=0, lt=1, description="Dropout before the head.")


class CNNParams(_Section):
    channels: PositiveInts = Field(description="Conv block widths, one block per entry.")
    hidden_size: int = Field(ge=1, description="Width of the dense layer before the head.")
    dropout: float = Field(ge=0, lt=1, description="Dropout before the head.")


class ResNetParams(_Section):
    channels: PositiveInts = Field(description="One residual stage per entry (its width).")
    blocks_per_stage: int = Field(ge=1, description="Residual blocks in each stage.")
    dropout: float = Field(ge=0, lt=1, description="Dropout before the head.")


class RecurrentParams(_Section):
    hidden_size: int = Field(ge=1, description="Width of the recurrent layer.")
    num_layers: int = Field(ge=1, description="Stacked recurrent layers.")
    bidirectional: bool = Field(description="Read the image rows both ways.")
    dropout: float = Field(ge=0, lt=1, description="Between stacked layers and before the head.")
    grad_clip: float | None = Field(
        None, gt=0, description="Clip the gradient norm to this in the train stage; null does not."
    )


class ViTParams(_Section):
    patch_size: int = Field(ge=1, description="Square patches; the image is padded to fit.")
    dim: int = Field(ge=1, description="Embedding width; a multiple of heads.")
    depth: int = Field(ge=1, description="Transformer encoder layers.")
    heads: int = Field(ge=1, description="Attention heads; they divide dim.")
    mlp_ratio: float = Field(gt=0, description="Feed-forward width as a multiple of dim.")
    dropout: float = Field(ge=0, lt=1, description="Dropout in the encoder and before the head.")
    pooling: Literal["cls", "mean"] = Field(description="Class token or mean of the patches.")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ViTParams:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        return self


class AutoencoderParams(_Section):
    channels: PositiveInts = Field(description="Encoder conv widths (the decoder mirrors them).")
    code_size: int = Field(ge=1, description="The code the classifier head reads.")
    dropout: float = Field(ge=0, lt=1, description="Dropout before the head.")
    reconstruction_weight: float = Field(ge=0, description="Reconstruction loss's weight.")
    denoising: bool = Field(description="Reconstruct clean inputs from noised ones.")
    noise_std: float = Field(ge=0, description="Gaussian noise, in standardised pixel units.")
    sparse: bool = Field(description="L1 penalty on the code.")
    sparsity_weight: float = Field(ge=0, description="Weight of the L1 penalty on the code.")


class SAEParams(_Section):
    hidden_sizes: PositiveInts = Field(description="The stacked autoencoders' code sizes.")
    dropout: float = Field(ge=0, lt=1, description="Fine-tuning dropout.")
    pretrain_epochs: int = Field(
        ge=0, description="Greedy pretraining epochs per layer; 0 trains from scratch."
    )
    pretrain_lr: float = Field(gt=0, description="Learning rate of the greedy pretraining.")
    noise_std: float = Field(ge=0, description="Denoising noise while pretraining; 0 is none.")


# Each model family of models/ and the section of its options (train.<family>); the config
# knows the families without importing torch. tests/model/test_models.py keeps both in step.
FAMILY_OPTIONS: dict[str, type[_Section]] = {
    "mlp": MLPParams,
    "cnn": CNNParams,
    "resnet": ResNetParams,
    "lstm": RecurrentParams,
    "gru": RecurrentParams,
    "vit": ViTParams,
    "autoencoder": AutoencoderParams,
    "sae": SAEParams,
}
MODEL_NAMES: tuple[str, ...] = tuple(FAMILY_OPTIONS)
AUTO = "auto"  # train.model: auto -> the select stage picks the family and its options
# train.device's choices in the Custom run form; params.yaml and overrides take any cuda:N
DEVICE_CHOICES = ("auto", "cpu", "cuda", *(f"cuda:{index}" for index in range(8)))


class TrainParams(_Section):
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
    mlp: MLPParams
    cnn: CNNParams
    resnet: ResNetParams
    lstm: RecurrentParams
    gru: RecurrentParams
    vit: ViTParams
    autoencoder: AutoencoderParams
    sae: SAEParams

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
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
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


# What a trial may vary besides the family's own options: the optimiser's settings.
OPTIMIZER_OPTIONS = ("optimizer", "lr", "weight_decay", "momentum")


def _option_fields(family: str) -> dict[str, FieldInfo]:
    """What ``select.candidates.<family>`` may vary: the family's options, then the optimiser's."""
    optimizer = {option: TrainParams.model_fields[option] for option in OPTIMIZER_OPTIONS}
    return {**FAMILY_OPTIONS[family].model_fields, **optimizer}


@cache
def _option_schemas(family: str) -> dict[str, dict[str, Any]]:
    """Each option's JSON schema (constraints only), as its own section declares it."""
    schemas = {
        **TrainParams.model_json_schema()["properties"],
        **FAMILY_OPTIONS[family].model_json_schema()["properties"],
    }
    return {
        option: {k: v for k, v in schemas[option].items() if k not in ("title", "description")}
        for option in _option_fields(family)
    }


NUMBER_LIMITS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _option_form(option: str, value: dict[str, Any]) -> dict[str, Any]:
    """One option of a family in the form: tabs for a range, a list of choices, a fixed value."""
    # "fixed" first: an option left out shows one empty input (it comes from train.<family>).
    # Not nullable (V1 fails on a type list): a space fixing grad_clip to null, valid in
    # params.yaml, is refused by the server, naming the key
    fixed = {**value, "title": "fixed"}
    item = {**value, "enum": [False, True]} if value.get("type") == "boolean" else value
    choices = {
        "title": "choices",
        "type": "object",
        "properties": {
            "choices": {"title": "choices", "type": "array", "items": item, "minItems": 1}
        },
        "required": ["choices"],
        "additionalProperties": False,
    }
    branches = [fixed, choices]
    if value.get("type") in ("integer", "number") and "enum" not in value:
        bound = {"type": value["type"], **{k: value[k] for k in NUMBER_LIMITS if k in value}}
        low_high = {
            "low": {**bound, "title": "low"},
            "high": {**bound, "title": "high"},
            "log": {"title": "log", "type": "boolean", "description": "A log scale (low > 0)."},
            "step": {"title": "step", "type": value["type"], "description": "A grid's step."},
        }
        range_ = {
            "title": "range",
            "type": "object",
            "properties": low_high,
            "required": ["low", "high"],
            "additionalProperties": False,
        }
        branches.insert(1, range_)
    return {"title": option, "anyOf": branches}


def _candidates_form(schema: dict[str, Any]) -> None:
    """``select.candidates`` in Prefect's Custom run form: a group of fields per family, each
    option a range, choices or a fixed value, rather than one raw JSON editor. The server
    validates Custom runs against it, so it accepts every space :func:`search_space` accepts
    but a family or an option fixed to null; unknown names, and their messages, stay
    pydantic's."""
    families = {}
    for family in MODEL_NAMES:
        schemas = _option_schemas(family)
        options = {
            option: _option_form(option, schemas[option]) for option in _option_fields(family)
        }
        families[family] = {
            "title": family,
            "type": "object",
            "description": f"Options left out come from train.{family} (the optimiser's from "
            "train); a family left empty is not searched.",
            "properties": options,
        }
    schema.pop("additionalProperties", None)
    schema.update(type="object", properties=families, minProperties=1)


def _is_float(field: FieldInfo) -> bool:
    return field.annotation is float or float in get_args(field.annotation)


def _as_declared(field: FieldInfo, spec: Any) -> Any:
    """A float option's numbers as floats: ``{low: 0, high: 1}`` from a browser's JSON (which
    writes 0.0 as 0) stays the float range it was, not an integer one."""
    if not _is_float(field):
        return spec
    if not isinstance(spec, Mapping):
        return _float(spec)
    if set(spec) == {"choices"}:
        return {"choices": [_float(choice) for choice in spec["choices"]]}
    return {
        key: _float(value) if key in ("low", "high", "step") else value
        for key, value in spec.items()
    }


def _float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class SelectParams(_Section):
    candidates: dict[str, dict[str, Any]] = Field(
        description="The families searched, each with its options' ranges: "
        "{low, high[, log][, step]}, {choices: [...]} or a fixed value.",
        json_schema_extra=_candidates_form,
    )
    max_trials: int = Field(ge=1, description="Finished trials (all workers together), at most.")
    timeout_s: float = Field(gt=0, description="No trial starts after this many seconds.")
    epochs: int = Field(ge=1, description="Epochs per trial, at most (pruning stops bad ones).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Per trial, as in train.")
    pruning_warmup_epochs: int = Field(ge=0, description="No pruning before this epoch.")
    seed: Seed = Field(description="The sampler's seed.")
    storage: str | None = Field(
        None,
        description="Optuna storage URL; null keeps the study in artifacts/selection/optuna.db. "
        "postgresql://... lets several workers run trials of one study.",
    )

    @field_validator("candidates", mode="before")
    @classmethod
    def _candidates(cls, value: Any) -> Any:
        if not isinstance(value, Mapping) or not value:
            raise ValueError("expected a mapping of model families to their search ranges")
        try:
            return search_space(value)
        except SpaceError as error:  # named select.candidates.<family>.<option>, not the lot
            raise PydanticCustomError(
                "sub_key", "{problem}", {"sub_key": error.key, "problem": error.problem}
            ) from None


class SpaceError(ValueError):
    """A bad entry of ``select.candidates``: its key (``<family>[.<option>]``) and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def search_space(candidates: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Check ``select.candidates``: known families, known options, non-empty ranges.

    Returns it as plain dicts, a float option's numbers as floats; a SpaceError names the
    first bad ``<family>.<option>``.
    """
    checked: dict[str, dict[str, Any]] = {}
    for family, space in candidates.items():
        if family not in FAMILY_OPTIONS:
            raise SpaceError(family, f"unknown model; expected one of {', '.join(MODEL_NAMES)}")
        space = {} if space is None else space
        if not isinstance(space, Mapping):
            raise SpaceError(family, "expected a mapping of options to ranges, or {}")
        fields = _option_fields(family)
        for option, spec in space.items():
            if option not in fields:
                raise SpaceError(
                    f"{family}.{option}", f"unknown option; expected one of {', '.join(fields)}"
                )
            _check_range(f"{family}.{option}", spec)
        checked[family] = {
            option: _as_declared(fields[option], spec) for option, spec in space.items()
        }
    return checked


RANGE_KEYS = {"low", "high", "log", "step"}


def _check_range(key: str, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        return  # a fixed value, checked with the family's options when a trial builds it
    if set(spec) == {"choices"}:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise SpaceError(key, "empty range (choices must be a non-empty list)")
        return
    if not {"low", "high"} <= set(spec) or set(spec) - RANGE_KEYS:
        raise SpaceError(
            key,
            "expected a value, {low: a, high: b[, log: true][, step: s]} or {choices: [...]} "
            f"(got keys {', '.join(map(str, spec))})",
        )
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise SpaceError(key, f"low and high must be numbers (got {low!r}, {high!r})")
    if low > high:
        raise SpaceError(key, f"empty range (low {low} is above high {high})")
    if spec.get("log") and low <= 0:
        raise SpaceError(key, f"a log range needs low above 0 (got {low})")
    if spec.get("log") and spec.get("step") is not None:
        raise SpaceError(key, "a range takes log or step, not both")


class EvaluateParams(_Section):
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


class RegistryParams(_Section):
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


class ServeParams(_Section):
    host: str = Field(min_length=1, description="Bind address; 127.0.0.1 keeps it on this machine.")
    port: int = Field(ge=1, le=65535, description="TCP port of mlcycle serve.")
    alias: str = Field(min_length=1, description="The registry alias served (champion).")
    max_batch: int = Field(ge=1, description="Images per /predict request, at most.")
    max_body_bytes: int = Field(ge=1024, description="Request body size limit.")
    max_image_side: int = Field(ge=1, description="Decoded images larger than this are refused.")
    poll_seconds: float = Field(
        gt=0, description="How often the app checks whether the alias moved (then reloads)."
    )
    log_sample_rate: float = Field(
        ge=0, le=1, description="Share of requests whose inputs and outputs are logged."
    )
    log_max_rows: int = Field(ge=1, description="Prediction log retention: newest rows kept.")
    deploy_timeout_s: float = Field(gt=0, description="Deploy waits this long for /ready.")
    start_on_deploy: bool = Field(
        description="Deploy starts `mlcycle serve` in the background when none is running."
    )
    threads: int = Field(
        ge=1,
        le=64,
        description="Requests decoded and predicted at once, in a pool beside the event loop.",
    )


CRON_FIELDS = 5


class ScheduleParams(_Section):
    work_pool: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="Prefect process work pool."
    )
    retrain_cron: str = Field(description="When `training-pipeline/scheduled` runs (cron).")
    monitor_cron: str = Field(description="When `monitoring/hourly` runs (cron).")
    timezone: str = Field(min_length=1, description="The crons' time zone (IANA name).")
    training_slot: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,99}$",
        description="Prefect global concurrency limit (1 slot): one training run at a time.",
    )
    slot_wait_minutes: float = Field(
        gt=0, description="A training run waits this long for the slot, then gives up."
    )

    @field_validator("retrain_cron", "monitor_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        # Prefect's own schedule model: what it accepts here, its server accepts at deploy time
        from prefect.client.schemas.schedules import CronSchedule

        try:
            if len(value.split()) != CRON_FIELDS:
                raise ValueError(value)
            CronSchedule(cron=value)
        except ValueError:
            raise ValueError(f"{value!r} is not a cron expression like '0 3 * * 1'") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone like 'UTC' or 'Europe/Paris'"
            ) from None
        return value


class MonitorParams(_Section):
    window: int = Field(ge=1, description="Newest logged predictions compared (rows).")
    max_age_hours: float = Field(
        gt=0, description="Logged predictions older than this are left out."
    )
    min_rows: int = Field(ge=1, description="Fewer rows than this: `not enough data`.")
    p_value: float = Field(
        gt=0, lt=1, description="A statistical test below this p-value says `drifted`."
    )
    drift_share: float = Field(
        gt=0, le=1, description="Input drift when at least this share of image features drifted."
    )
    low_confidence: float = Field(
        gt=0, lt=1, description="A prediction below this top probability counts as unsure."
    )
    max_low_confidence_increase: float = Field(
        gt=0, le=1, description="Confidence drift: unsure share rose by more than this."
    )
    max_accuracy_drop: float = Field(
        gt=0, le=1, description="Live accuracy (labelled feedback) below test accuracy by this."
    )
    min_labels: int = Field(ge=1, description="Labelled predictions needed to judge accuracy.")
    retrain_on_drift: bool = Field(
        description="The drift event triggers `training-pipeline/scheduled` (make deploy)."
    )
    cooldown_hours: float = Field(
        ge=0, description="The drift trigger's window: one retraining in this many hours."
    )
    retrain_delay_minutes: float = Field(
        ge=0,
        description="The drift trigger's training starts this long after the event, so that "
        "labelled feedback of the new population accumulates first.",
    )


with warnings.catch_warnings():
    # The section is called `validate`, like its stage; pydantic warns that this shadows
    # BaseModel.validate, a deprecated v1 alias nobody here calls. (The register step's section
    # is `registry`: a field named `register` would take ABCMeta.register as its default.)
    warnings.filterwarnings("ignore", message='Field name "validate"', category=UserWarning)

    class Params(_Section):
        collect: CollectParams
        validate: ValidateParams
        preprocess: PreprocessParams
        train: TrainParams
        select: SelectParams
        evaluate: EvaluateParams
        registry: RegistryParams
        serve: ServeParams
        schedule: ScheduleParams
        monitor: MonitorParams

        def inert_prefixes(self) -> tuple[str, ...]:
            """Dotted-key prefixes that cannot change this run's model: the options of families
            it cannot train (neither the fixed ``train.model`` nor a ``select`` candidate), and
            the ``select`` section when the model is fixed."""
            if self.train.model == AUTO:
                used, inert = set(self.select.candidates), []
            else:
                used, inert = {self.train.model}, ["select."]
            return (*inert, *(f"train.{name}." for name in MODEL_NAMES if name not in used))

        def flat(self) -> dict[str, Any]:
            """Dotted keys to values, e.g. ``{"train.lr": 0.001}``: what MLflow logs."""
            return dict(flatten(self.model_dump(mode="json")))


# Mappings that are one value (a search space), not a section: flattened to their canonical
# JSON, so params.yaml, MLflow and dvc.lock (which orders keys its own way) agree on them.
MAPPING_VALUES = frozenset({"select.candidates"})


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every leaf: ``{"train": {"lr": 0.1}}`` -> ``("train.lr", 0.1)``."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted in MAPPING_VALUES:
            yield dotted, json.dumps(value, sort_keys=True)
        elif isinstance(value, Mapping):
            yield from flatten(value, f"{dotted}.")
        else:
            yield dotted, value


def describe_validation_error(error: ValidationError, origin: str) -> str:
    """One line naming each bad key of a pydantic validation, as `origin: key: problem; ...`."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "sub_key":  # a key inside a mapping-valued field
            problems.append(f"{key}.{item['ctx']['sub_key']}: {item['msg']}")
        elif item["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        elif item["type"] == "missing":
            problems.append(f"{key}: missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {message} (got {item['input']!r})")
    return f"{origin}: " + "; ".join(problems)


def parse_params(data: Any, origin: str = str(PARAMS_FILE)) -> Params:
    """Validate a parsed params tree, naming each bad key in one line."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, origin)) from None


def _yaml() -> YAML:
    # YAML 1.2, as DVC reads params.yaml: 1e-3 is a number (PyYAML's YAML 1.1 says string).
    return YAML(typ="safe", pure=True)


def read_params_tree(path: Path = PARAMS_FILE) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the repository root")
    try:
        tree = _yaml().load(path.read_text())
    except YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return tree if tree is not None else {}


def load_params(path: Path = PARAMS_FILE, overrides: Iterable[str] = ()) -> Params:
    """Load ``params.yaml`` and apply ``section.key=value`` overrides (values parsed as YAML)."""
    tree = read_params_tree(path)
    missing = missing_keys(tree, Params)
    if missing:  # the form may leave a nullable key out; the file names every key
        named = "; ".join(f"{key}: missing" for key in missing)
        raise ConfigError(f"{path}: {named} (write null where a key may be null)")
    overrides = list(overrides)
    for override in overrides:
        apply_override(tree, override)
    origin = f"{path} with overrides {' '.join(overrides)}" if overrides else str(path)
    return parse_params(tree, origin=origin)


def missing_keys(tree: Any, model: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted keys ``model`` defines that ``tree`` leaves out, nullable ones included
    (their default None serves the Prefect form, not a params.yaml that forgot them)."""
    if not isinstance(tree, Mapping):
        return []  # the model's own validation names a section that is not a mapping
    missing = []
    for name, info in model.model_fields.items():
        if name not in tree:
            missing.append(f"{prefix}{name}")
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            missing += missing_keys(tree[name], info.annotation, f"{prefix}{name}.")
    return missing


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set one ``dotted.key=value`` in a params tree, the way ``dvc exp run -S`` does."""
    key, sep, raw = override.partition("=")
    if not sep:
        raise ConfigError(f"override {override!r}: expected section.key=value")
    try:
        node, leaf = _parent_of(tree, key.strip())
    except ConfigError as error:
        raise ConfigError(f"override {override!r}: {error}") from None
    try:
        node[leaf] = _yaml().load(raw) if raw.strip() else raw
    except YAMLError:
        node[leaf] = raw


def _parent_of(tree: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    """The section holding ``dotted`` (``train.cnn.dropout`` -> ``tree["train"]["cnn"]``) and
    the last key; ConfigError naming the first part of the path that is not there."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError("expected section.key=value")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, Mapping):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])} is not a section of params.yaml")
        node = child
    if parts[-1] not in node:
        raise ConfigError(f"{dotted} is not a key of params.yaml")
    return node, parts[-1]


def apply_params(params: Params | None, path: Path = PARAMS_FILE) -> Params:
    """Make ``params.yaml`` hold ``params`` (None: keep the file), changing only what differs.

    Only the lines of keys whose values really changed are edited, in place; every other byte
    (comments, alignment, key order, ``0.0``) stays. Values compare as values: ``0`` is
    ``0.0`` in a float field, a mapping in another key order is the same mapping, so a full
    params object from Prefect's Custom run form changes just what the person changed. The
    changed keys are logged. Overrides land in the file (as ``dvc exp run --set-param`` does)
    so that ``dvc status`` agrees with what ran.
    """
    current = load_params(path)
    if params is None or params == current:
        return current
    text = path.read_text()
    wanted = params.model_dump(mode="json")
    edited, changes = edit_params_text(text, wanted)
    if not _holds(edited, params):  # a layout the line editor misread: write it all
        run_logger("mlcycle.config").warning(
            "params.yaml: could not edit in place; rewrote the file (comments kept)"
        )
        edited = _rewrite(text, wanted)
    if edited != text:
        with atomic_path(path) as tmp:
            tmp.write_text(edited)
    for key, old, new in changes:
        run_logger("mlcycle.config").info("params.yaml: %s %r -> %r", key, old, new)
    return load_params(path)


def _holds(text: str, params: Params) -> bool:
    """Whether ``text``, read as params.yaml, is ``params``."""
    try:
        return parse_params(_yaml().load(text)) == params
    except (YAMLError, ConfigError):
        return False


@dataclass(frozen=True)
class _Edit:
    """Lines ``first`` to ``last`` (inclusive; ``last = first - 1`` inserts) become ``lines``."""

    first: int
    last: int
    lines: list[str]


class _CannotEdit(Exception):
    """A value's text the line editor cannot delimit."""


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()  # a key's "value" before it was added or after it was removed
Change = tuple[str, Any, Any]  # dotted key, old and new value (plain Python, or ABSENT)


@dataclass
class _Plan:
    lines: list[str]  # the file's lines, as read
    edits: list[_Edit] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    editable: bool = True  # False: some value's text could not be delimited


def edit_params_text(text: str, wanted: Mapping[str, Any]) -> tuple[str, list[Change]]:
    """``text`` (params.yaml) edited to hold ``wanted``, and the changes.

    Each key whose value differs gets its value's text replaced on its own line (a comment
    after it keeps its column); a block mapping (``select.candidates``) is edited key by key,
    keys added or removed there get or lose their lines. Everything else stays byte for byte.
    A layout this cannot edit (a block scalar, say) is dumped whole by ruamel instead.
    """
    newline = text.endswith("\n")
    plan = _Plan((text if newline or not text else f"{text}\n").splitlines(keepends=True))
    _edit_mapping(_round_trip().load(text), wanted, "", plan)
    if not plan.editable:
        return _rewrite(text, wanted), plan.changes
    lines = plan.lines
    for edit in sorted(plan.edits, key=lambda e: e.first, reverse=True):
        lines[edit.first : edit.last + 1] = edit.lines
    edited = "".join(lines)
    return edited if newline else edited.removesuffix("\n"), plan.changes


def _edit_mapping(node: Any, wanted: Mapping[str, Any], prefix: str, plan: _Plan) -> None:
    added = []
    for key, value in wanted.items():
        dotted = f"{prefix}{key}"
        if key not in node:
            if value is not None:  # an absent nullable key already is null
                added.append((key, value))
                plan.changes.append((dotted, ABSENT, value))
            continue
        old = node[key]
        if same_value(old, value):
            continue
        if _is_block_mapping(old) and isinstance(value, Mapping) and value:
            _edit_mapping(old, value, f"{dotted}.", plan)
            continue
        plan.changes.append((dotted, _plain(old), _ordered_like(old, value)))
        try:
            plan.edits.append(_replace_value(plan.lines, node, key, value))
        except _CannotEdit:
            plan.editable = False
    for key in node:
        if key not in wanted:
            line, col = node.lc.key(key)
            plan.edits.append(_Edit(line, _extent_end(plan.lines, line, col), []))
            plan.changes.append((f"{prefix}{key}", _plain(node[key]), ABSENT))
    if added and not node:
        plan.editable = False
    elif added:
        line, col = node.lc.key(list(node)[-1])
        end = _extent_end(plan.lines, line, col)
        plan.edits.append(_Edit(end + 1, end, _block_lines(added, " " * col)))


def _replace_value(lines: list[str], node: Any, key: str, value: Any) -> _Edit:
    """The edit that writes ``value`` as the text of ``node[key]``, on the key's own line."""
    key_line, key_col = node.lc.key(key)
    old = node[key]
    value = _ordered_like(old, value)
    if _is_block_mapping(old) or (isinstance(old, list) and not old.fa.flow_style()):
        # a block collection becomes one line: its lines go (its own comments with them)
        indent = " " * key_col
        return _Edit(
            key_line,
            _extent_end(lines, key_line, key_col),
            [f"{indent}{key}: {_flow_text(value)}\n"],
        )
    if old is None:
        start_line, start_col = key_line, _after_colon(lines[key_line], key_col, key)
    else:
        start_line, start_col = node.lc.value(key)
    end_line, end_col = _value_end(lines, start_line, start_col)
    text = _flow_text(value, quote=lines[start_line][start_col : start_col + 1])
    head = lines[start_line][:start_col]
    if head.endswith(":"):
        text = f" {text}"
    grown = len(text) - (end_col - start_col) if start_line == end_line else 0
    tail = _realign(lines[end_line][end_col:], grown)
    return _Edit(start_line, end_line, [f"{head}{text}{tail}"])


def _after_colon(line: str, key_col: int, key: str) -> int:
    """Where an empty value (``key:`` meaning null) would start: just after the colon."""
    colon = line.find(":", key_col + len(key))
    if colon < 0:
        raise _CannotEdit(key)
    rest = line[colon + 1 :]
    value = rest.lstrip(" ")
    if value.strip() and not value.startswith("#"):  # `key: null` or `key: ~`
        return colon + 1 + len(rest) - len(value)
    return colon + 1


def _value_end(lines: list[str], line: int, col: int) -> tuple[int, int]:
    """Where the value text starting at ``(line, col)`` ends (exclusive)."""
    text = lines[line]
    first = text[col : col + 1]
    if first in ("[", "{"):
        return _flow_end(lines, line, col)
    if first in ('"', "'"):
        end = col + 1
        while end < len(text):
            if text[end] == "\\" and first == '"':
                end += 2
                continue
            if text[end] == first:
                if first == "'" and text[end + 1 : end + 2] == "'":
                    end += 2
                    continue
                return line, end + 1
            end += 1
        raise _CannotEdit(text)  # a quoted scalar over several lines
    if first in ("|", ">", "&", "*", "!"):
        raise _CannotEdit(text)  # block scalars, anchors, aliases, tags
    comment = re.search(r"\s#", text[col:])
    end = col + comment.start() if comment else len(text.rstrip("\r\n"))
    return line, len(text[:end].rstrip())


def _flow_end(lines: list[str], line: int, col: int) -> tuple[int, int]:
    """The end of a flow collection (``[...]`` or ``{...}``), over as many lines as it takes."""
    depth, quote = 0, ""
    for number in range(line, len(lines)):
        text = lines[number]
        for index in range(col if number == line else 0, len(text)):
            char = text[index]
            if quote:
                quote = "" if char == quote else quote
            elif char in ("'", '"'):
                quote = char
            elif char == "#" and text[index - 1 : index].isspace():
                break  # a comment runs to the end of the line
            elif char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
                if depth == 0:
                    return number, index + 1
    raise _CannotEdit(lines[line])


def _realign(tail: str, grown: int) -> str:
    """The rest of a line after a value that grew by ``grown`` characters: a comment keeps its
    column while there is room (one space at least)."""
    match = re.fullmatch(r"([ \t]*)(#[^\r\n]*)?(\r?\n)?", tail)
    if match is None or match.group(2) is None:
        return tail.lstrip(" \t") if match else tail
    spaces, comment, newline = match.group(1), match.group(2), match.group(3) or ""
    return " " * max(1, len(spaces) - grown) + comment + newline


def _extent_end(lines: list[str], line: int, col: int) -> int:
    """The last line of the key at ``(line, col)``: its own and the deeper-indented ones after
    it (children, continued comments), trailing blank lines left out."""
    end = line
    for number in range(line + 1, len(lines)):
        text = lines[number]
        if not text.strip():
            continue
        if len(text) - len(text.lstrip(" ")) <= col:
            break
        end = number
    return end


def _block_lines(items: list[tuple[str, Any]], indent: str) -> list[str]:
    """New keys in params.yaml's style: a mapping as a block of one-line values (as
    select.candidates' families are), anything else on the key's line."""
    lines = []
    for key, value in items:
        if isinstance(value, Mapping) and value:
            lines.append(f"{indent}{key}:\n")
            lines.extend(f"{indent}  {k}: {_flow_text(v)}\n" for k, v in value.items())
        else:
            lines.append(f"{indent}{key}: {_flow_text(value)}\n")
    return lines


def _plain(value: Any) -> Any:
    """A value read by ruamel's round trip as plain dicts, lists and scalars (for the log)."""
    return json.loads(json.dumps(value))


def _ordered_like(old: Any, new: Any) -> Any:
    """``new`` with the keys its mappings share with ``old`` in ``old``'s order (a browser's
    JSON may sort them): ``{low: 0.1, high: 0.5}`` stays in that order."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = [k for k in old if k in new] + [k for k in new if k not in old]
        return {k: _ordered_like(old.get(k), new[k]) for k in keys}
    if isinstance(old, list | tuple) and isinstance(new, list | tuple) and len(old) == len(new):
        return [_ordered_like(o, n) for o, n in zip(old, new, strict=True)]
    return new


def _is_block_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and hasattr(value, "fa") and not value.fa.flow_style()


def same_value(old: Any, new: Any) -> bool:
    """Equal as params: ``0 == 0.0`` (a float field read from JSON), mappings in any key order,
    lists and tuples alike; but ``true`` is not ``1`` and ``null`` is nothing else."""
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool) and old == new
    if isinstance(old, int | float) and isinstance(new, int | float):
        return old == new
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return old.keys() == new.keys() and all(same_value(old[k], new[k]) for k in old)
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        return len(old) == len(new) and all(map(same_value, old, new))
    if isinstance(old, str) or isinstance(new, str):
        return isinstance(old, str) and isinstance(new, str) and old == new
    return type(old) is type(new) and old == new


def _flow_text(value: Any, quote: str = "") -> str:
    """``value`` as params.yaml writes it on one line: ``[8, 16]``, ``{low: 0.0, high: 0.5}``,
    ``null``; a string quoted only when it must be (or when it was: ``quote``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_flow_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow_text(item) for item in value) + "]"
    text = str(value)
    if quote == "'":
        return "'" + text.replace("'", "''") + "'"
    if (
        quote != '"'
        and PLAIN_STRING.fullmatch(text)
        and _yaml().load(text) == text
        and text.lower() not in YAML_11_BOOLEANS
    ):
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


PLAIN_STRING = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./:@+-]*")
# strings YAML 1.2 reads as strings but YAML 1.1 (PyYAML, as other tools read params.yaml) as
# booleans: quoted, like the floats of _float_text
YAML_11_BOOLEANS = frozenset({"y", "n", "yes", "no", "on", "off"})


def _float_text(value: float) -> str:
    """A float YAML 1.2 and 1.1 both read as one: ``0.000001``, not ``1e-06`` (a string to
    PyYAML); whole numbers keep their ``.0``."""
    if value != value:
        return ".nan"
    if value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text if "." in text else f"{text}.0"


def _round_trip() -> YAML:
    return YAML()  # round-trip mode: line and column of every key and value


def _rewrite(text: str, wanted: Mapping[str, Any]) -> str:
    """The whole file dumped by ruamel's round trip (comments and key order kept, layout
    not): the fallback for a layout :func:`edit_params_text` cannot edit."""
    yaml = _round_trip()
    yaml.preserve_quotes = True
    yaml.representer.add_representer(
        type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    tree = yaml.load(text)
    _merge(tree, wanted)
    stream = io.StringIO()
    yaml.dump(tree, stream)
    return stream.getvalue()


def _merge(node: Any, wanted: Mapping[str, Any]) -> None:
    for key, value in wanted.items():
        old = node.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            _merge(old, value)
            for gone in [k for k in old if k not in value]:
                del old[gone]
        elif key not in node or not same_value(old, value):
            node[key] = value
