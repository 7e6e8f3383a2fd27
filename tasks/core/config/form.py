"""How the params sections look in Prefect's Custom run form (the flow's parameters): the
JSON-schema shaping only; the sections and the search space declare what is valid."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NULL_SCHEMA = {"type": "null"}
NUMBER_LIMITS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def nullable_as_optional(schema: dict[str, Any]) -> None:
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


def option_form(option: str, value: dict[str, Any]) -> dict[str, Any]:
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


def candidates_form(
    schema: dict[str, Any], option_schemas: Mapping[str, Mapping[str, dict[str, Any]]]
) -> None:
    """``select.candidates`` in Prefect's Custom run form: a group of fields per family, each
    option a range, choices or a fixed value, rather than one raw JSON editor. The server
    validates Custom runs against it, so it accepts every space the search-space check accepts
    but a family or an option fixed to null; unknown names, and their messages, stay
    pydantic's. ``option_schemas``: family -> option -> its JSON schema (constraints only)."""
    families = {}
    for family, schemas in option_schemas.items():
        families[family] = {
            "title": family,
            "type": "object",
            "description": f"Options left out come from train.{family} (the optimiser's from "
            "train); a family left empty is not searched.",
            "properties": {option: option_form(option, value) for option, value in schemas.items()},
        }
    schema.pop("additionalProperties", None)
    schema.update(type="object", properties=families, minProperties=1)
