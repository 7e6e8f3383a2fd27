"""The model the train stage trains: ``train.model`` as written, or, with ``train.model: auto``,
the select stage's winner read back from ``reports/selection.json``.

A choice is a family, its options and the optimiser's settings; applied to ``train`` it gives
the ``TrainParams`` the train stage (and every selection trial) runs with, checked like
``params.yaml`` itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tasks.core.config import (
    AUTO,
    OPTIMIZER_OPTIONS,
    ConfigError,
    Params,
    TrainParams,
    describe_validation_error,
)
from tasks.core.files import read_json
from tasks.core.paths import REPORTS_DIR

SELECTION_FILE = REPORTS_DIR / "selection.json"
FIXED, SEARCHED = "fixed", "search"  # how a selection file's choice was made


@dataclass(frozen=True)
class ModelChoice:
    model: str
    options: dict[str, Any] = field(default_factory=dict)  # the family's, over train.<family>
    optimizer: dict[str, Any] = field(default_factory=dict)  # over train.{optimizer, lr, ...}

    def apply(self, train: TrainParams, origin: str) -> TrainParams:
        """``train`` with this family, its options and optimiser settings; a value the family
        or the optimiser does not accept is a ConfigError naming ``train.<key>``."""
        tree = train.model_dump()
        tree["model"] = self.model
        tree[self.model] = {**tree[self.model], **self.options}
        tree.update(self.optimizer)
        try:
            return TrainParams.model_validate(tree)
        except ValidationError as error:
            message = describe_validation_error(error, origin)
            raise ConfigError(message.replace(f"{origin}: ", f"{origin}: train.", 1)) from None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """``model``, ``<family>.<option>`` and the optimiser's keys: MLflow params."""
        options = {f"{self.model}.{key}": value for key, value in self.options.items()}
        return {"model": self.model, **options, **self.optimizer}


def fixed_choice(train: TrainParams) -> ModelChoice:
    """What ``train`` trains: its family with all of ``train.<family>`` and the optimiser's
    settings, as JSON values (lists, as params.yaml writes them)."""
    dumped = train.model_dump(mode="json")
    return ModelChoice(
        train.model, dumped[train.model], {key: dumped[key] for key in OPTIMIZER_OPTIONS}
    )


def read_choice(path: Path = SELECTION_FILE) -> tuple[str, ModelChoice]:
    """(how it was chosen, the choice) from a selection file the select stage wrote."""
    if not path.is_file():
        raise ConfigError(f"{path}: not found; train.model is {AUTO}: run the select stage first")
    payload = read_json(path)
    try:
        winner = payload["winner"]
        return payload["mode"], ModelChoice(
            winner["model"], dict(winner["options"]), dict(winner["optimizer"])
        )
    except (KeyError, TypeError):
        raise ConfigError(
            f"{path}: not a selection written by the select stage (expected mode and winner "
            "with model, options and optimizer); run the select stage again"
        ) from None


def chosen_train_params(params: Params, path: Path = SELECTION_FILE) -> TrainParams:
    """The train section the train stage runs with (see the module docstring)."""
    if params.train.model != AUTO:
        return params.train
    mode, choice = read_choice(path)
    if mode != SEARCHED:
        raise ConfigError(
            f"{path}: holds the fixed model {choice.model!r}, but train.model is {AUTO}; "
            "run the select stage (dvc repro select)"
        )
    return choice.apply(params.train, origin=f"{path} (the selected model)")
