"""The ``select`` section: the model search's space, budget and storage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from tasks.core.config.base import Section, Seed
from tasks.core.config.families import MODEL_NAMES
from tasks.core.config.form import candidates_form
from tasks.core.config.space import SpaceError, option_schemas, search_space


def _candidates_form(schema: dict[str, Any]) -> None:
    candidates_form(schema, {family: option_schemas(family) for family in MODEL_NAMES})


class SelectParams(Section):
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
