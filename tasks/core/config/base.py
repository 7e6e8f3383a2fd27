"""What every params section shares: frozen, strict, unknown keys refused, the form's shape;
the error a bad ``params.yaml`` or override raises; the field types several sections use."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from tasks.core.config.form import nullable_as_optional
from tasks.core.errors import MlcycleError


class ConfigError(MlcycleError):
    """``params.yaml`` or an override is invalid."""


# A tuple field accepts a YAML/JSON list; the rest of each model stays strict (no "3" for 3).
PositiveInts = Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(strict=False, min_length=1)]


Seed = Annotated[int, Field(ge=0)]


class Section(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        json_schema_extra=nullable_as_optional,
        field_title_generator=lambda name, _: name,  # the form's labels: params.yaml's keys
    )
