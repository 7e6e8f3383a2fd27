"""The search space's checks: what ``select.candidates`` may name (known families, their options
and the optimiser's) and how each range must look; a bad entry is named ``<family>.<option>``."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, get_args

from pydantic.fields import FieldInfo

from tasks.core.config.families import FAMILY_OPTIONS, MODEL_NAMES
from tasks.core.config.training import TrainParams

# What a trial may vary besides the family's own options: the optimiser's settings.
OPTIMIZER_OPTIONS = ("optimizer", "lr", "weight_decay", "momentum")


def option_fields(family: str) -> dict[str, FieldInfo]:
    """What ``select.candidates.<family>`` may vary: the family's options, then the optimiser's."""
    optimizer = {option: TrainParams.model_fields[option] for option in OPTIMIZER_OPTIONS}
    return {**FAMILY_OPTIONS[family].model_fields, **optimizer}


@cache
def option_schemas(family: str) -> dict[str, dict[str, Any]]:
    """Each option's JSON schema (constraints only), as its own section declares it."""
    schemas = {
        **TrainParams.model_json_schema()["properties"],
        **FAMILY_OPTIONS[family].model_json_schema()["properties"],
    }
    return {
        option: {k: v for k, v in schemas[option].items() if k not in ("title", "description")}
        for option in option_fields(family)
    }


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
        fields = option_fields(family)
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
