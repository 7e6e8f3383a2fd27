"""Typed, frozen parameters loaded once from ``params.yaml``, and the one writer of that file.

Every stage reads its section through :func:`load_params`; nothing else parses the YAML.
Unknown keys and wrong types fail with a message naming the dotted key at fault.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
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


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


SOURCE_PATTERN = re.compile(r"^(sklearn-digits|torchvision:[A-Za-z0-9_]+|folder:.+|npz:.+)$")


class CollectParams(_Section):
    source: str = Field(
        description="sklearn-digits | torchvision:<Name> | folder:<path> | npz:<path>"
    )
    root: str = Field(description="Folder holding (or receiving) torchvision datasets.")
    download: bool = Field(description="Let torchvision download missing files.")
    feedback: bool = Field(
        description="Add the served images people labelled (data/external/feedback.npz)."
    )
    augment_to: int | None = Field(
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
    max_rows: int = Field(ge=1)
    min_class_share: float = Field(ge=0, le=1, description="The rarest class's share at least.")
    max_blank_share: float = Field(ge=0, le=1, description="All-constant images' share at most.")

    @model_validator(mode="after")
    def _ordered_bounds(self) -> ValidateParams:
        if self.min_rows > self.max_rows:
            raise ValueError(f"min_rows {self.min_rows} is above max_rows {self.max_rows}")
        return self


class PreprocessParams(_Section):
    seed: Seed
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    image_size: int | None = Field(ge=1, description="Resize to a square of this side; null keeps.")
    channels: Literal[1, 3] | None = Field(description="Convert to 1 or 3 channels; null keeps.")

    @model_validator(mode="after")
    def _room_for_training(self) -> PreprocessParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction is {self.val_fraction + self.test_fraction:g}; "
                "expected below 1 so that a train split remains"
            )
        return self


class MLPParams(_Section):
    hidden_sizes: PositiveInts
    dropout: float = Field(ge=0, lt=1)


class CNNParams(_Section):
    channels: PositiveInts
    hidden_size: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)


class ResNetParams(_Section):
    channels: PositiveInts = Field(description="One residual stage per entry (its width).")
    blocks_per_stage: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)


class RecurrentParams(_Section):
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    bidirectional: bool
    dropout: float = Field(ge=0, lt=1, description="Between stacked layers and before the head.")
    grad_clip: float | None = Field(
        gt=0, description="Clip the gradient norm to this in the train stage; null does not."
    )


class ViTParams(_Section):
    patch_size: int = Field(ge=1, description="Square patches; the image is padded to fit.")
    dim: int = Field(ge=1, description="Embedding width; a multiple of heads.")
    depth: int = Field(ge=1, description="Transformer encoder layers.")
    heads: int = Field(ge=1)
    mlp_ratio: float = Field(gt=0, description="Feed-forward width as a multiple of dim.")
    dropout: float = Field(ge=0, lt=1)
    pooling: Literal["cls", "mean"] = Field(description="Class token or mean of the patches.")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ViTParams:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        return self


class AutoencoderParams(_Section):
    channels: PositiveInts = Field(description="Encoder conv widths (the decoder mirrors them).")
    code_size: int = Field(ge=1, description="The code the classifier head reads.")
    dropout: float = Field(ge=0, lt=1)
    reconstruction_weight: float = Field(ge=0, description="Reconstruction loss's weight.")
    denoising: bool = Field(description="Reconstruct clean inputs from noised ones.")
    noise_std: float = Field(ge=0, description="Gaussian noise, in standardised pixel units.")
    sparse: bool = Field(description="L1 penalty on the code.")
    sparsity_weight: float = Field(ge=0)


class SAEParams(_Section):
    hidden_sizes: PositiveInts = Field(description="The stacked autoencoders' code sizes.")
    dropout: float = Field(ge=0, lt=1, description="Fine-tuning dropout.")
    pretrain_epochs: int = Field(
        ge=0, description="Greedy pretraining epochs per layer; 0 trains from scratch."
    )
    pretrain_lr: float = Field(gt=0)
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


class TrainParams(_Section):
    model: str = Field(description="A family of models/, or auto (the select stage chooses).")
    optimizer: Literal["adam", "adamw", "sgd"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    momentum: float = Field(ge=0, lt=1, description="Used by sgd only.")
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    seed: Seed
    early_stopping_patience: int | None = Field(
        ge=1, description="Stop after this many epochs without a better validation loss."
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
    device: str = Field(description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
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


class SelectParams(_Section):
    candidates: dict[str, dict[str, Any]] = Field(
        description="family -> {option: value | {low, high[, log][, step]} | {choices: [...]}}"
    )
    max_trials: int = Field(ge=1, description="Finished trials (all workers together), at most.")
    timeout_s: float = Field(gt=0, description="No trial starts after this many seconds.")
    epochs: int = Field(ge=1, description="Epochs per trial, at most (pruning stops bad ones).")
    early_stopping_patience: int | None = Field(ge=1, description="Per trial, as in train.")
    pruning_warmup_epochs: int = Field(ge=0, description="No pruning before this epoch.")
    seed: Seed = Field(description="The sampler's seed.")
    storage: str | None = Field(
        description="Optuna storage URL; null keeps the study in artifacts/selection/optuna.db. "
        "postgresql://... lets several workers run trials of one study."
    )

    @field_validator("candidates", mode="before")
    @classmethod
    def _candidates(cls, value: Any) -> Any:
        if not isinstance(value, Mapping) or not value:
            raise ValueError("expected a mapping of model families to their search ranges")
        try:
            search_space(value)
        except SpaceError as error:  # named select.candidates.<family>.<option>, not the lot
            raise PydanticCustomError(
                "sub_key", "{problem}", {"sub_key": error.key, "problem": error.problem}
            ) from None
        return value


class SpaceError(ValueError):
    """A bad entry of ``select.candidates``: its key (``<family>[.<option>]``) and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def search_space(candidates: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Check ``select.candidates``: known families, known options, non-empty ranges.

    Returns it as plain dicts; a SpaceError names the first bad ``<family>.<option>``.
    """
    checked: dict[str, dict[str, Any]] = {}
    for family, space in candidates.items():
        if family not in FAMILY_OPTIONS:
            raise SpaceError(family, f"unknown model; expected one of {', '.join(MODEL_NAMES)}")
        space = {} if space is None else space
        if not isinstance(space, Mapping):
            raise SpaceError(family, "expected a mapping of options to ranges, or {}")
        allowed = (*FAMILY_OPTIONS[family].model_fields, *OPTIMIZER_OPTIONS)
        for option, spec in space.items():
            if option not in allowed:
                raise SpaceError(
                    f"{family}.{option}", f"unknown option; expected one of {', '.join(allowed)}"
                )
            _check_range(f"{family}.{option}", spec)
        checked[family] = dict(space)
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
    baseline_max_iter: int = Field(ge=1)
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
    port: int = Field(ge=1, le=65535)
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
    overrides = list(overrides)
    for override in overrides:
        apply_override(tree, override)
    origin = f"{path} with overrides {' '.join(overrides)}" if overrides else str(path)
    return parse_params(tree, origin=origin)


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

    Comments and layout survive; the changed keys are logged. Overrides land in the file (as
    ``dvc exp run --set-param`` does) so that ``dvc status`` agrees with what ran.
    """
    current = load_params(path)
    if params is None or params == current:
        return current
    old, new = current.flat(), params.flat()
    changed = {key: new[key] for key in new if new[key] != old[key]}
    yaml = YAML()  # round-trip mode: keeps comments and key order ...
    yaml.preserve_quotes = True  # ... and quotes: the crons stay "0 3 * * 1"
    yaml.representer.add_representer(  # write None as `null`, as the file spells it
        type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    tree = yaml.load(path.read_text())
    for key, value in changed.items():
        node, leaf = _parent_of(tree, key)
        node[leaf] = json.loads(value) if key in MAPPING_VALUES else _flow_style(value)
    with atomic_path(path) as tmp, tmp.open("w") as handle:
        yaml.dump(tree, handle)
    for key, value in changed.items():
        run_logger("mlcycle.config").info("params.yaml: %s %r -> %r", key, old[key], value)
    return load_params(path)


def _flow_style(value: Any) -> Any:
    """Lists as ``[8, 16]`` on one line, as params.yaml writes them."""
    if not isinstance(value, list):
        return value
    from ruamel.yaml.comments import CommentedSeq

    sequence = CommentedSeq(value)
    sequence.fa.set_flow_style()
    return sequence
