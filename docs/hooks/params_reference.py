"""MkDocs hook: the parameters reference page, generated at build time from the params schema.

Every key comes from the frozen pydantic models of ``tasks.core.config`` (type, constraints,
description) and its value from the repository's ``params.yaml``, so the page cannot drift
from the code: a new key shows up on the next ``make docs`` by itself. The models' fields are
read directly, not their JSON schema, which is shaped for Prefect's Custom run form.
"""

from __future__ import annotations

import html
import io
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PAGE = "reference/parameters.md"

# Where each section is explained in the user guide (the schema says what, these pages say why).
SECTION_GUIDE: dict[str, tuple[str, str]] = {
    "collect": ("The collect stage: where the data comes from.", "../guide/data.md"),
    "validate": ("Thresholds of the Great Expectations suites.", "../guide/validation.md"),
    "preprocess": ("Resizing, channels and the train/val/test split.", "../guide/pipeline.md"),
    "train": ("The train stage and its model families.", "../guide/models.md"),
    "select": ("The model search (`train.model: auto`).", "../guide/models.md#selection"),
    "evaluate": ("Test metrics, the baseline, the monitoring reference.", "../guide/pipeline.md"),
    "registry": ("The MLflow Model Registry step and its gate.", "../guide/registry.md"),
    "serve": ("The serving app and the flow's deploy step.", "../guide/serving.md"),
    "schedule": ("Prefect deployments, schedules and the worker.", "../guide/closing-the-loop.md"),
    "monitor": ("Drift monitoring and retraining on drift.", "../guide/closing-the-loop.md"),
}

TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}
BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def on_files(files: Any, config: Any) -> Any:
    """Add the generated page to the site's files (MkDocs calls this before it builds the nav)."""
    from mkdocs.structure.files import File

    root = Path(config.config_file_path).parent
    files.append(File.generated(config, PAGE, content=parameters_markdown(root)))
    return files


def parameters_markdown(root: Path) -> str:
    """The whole reference page: one table per section of ``params.yaml``."""
    if str(root) not in sys.path:  # the hook runs inside mkdocs, maybe outside the venv's path
        sys.path.insert(0, str(root))
    from tasks.core.config import MAPPING_VALUES, Params, read_params_tree

    values = read_params_tree(root / "params.yaml")
    lines = [
        "# Parameters reference",
        "",
        "Every key of `params.yaml`, generated from the params schema (`tasks/core/config/`) "
        "when this site is built: its type, the values it accepts, its value in the "
        "repository's `params.yaml` and what it does. `params.yaml` loads once into frozen, "
        "typed objects that refuse unknown keys and wrong types, naming the key at fault.",
        "",
        "Change a key for one run with `mlcycle run --set section.key=value` (or "
        "`dvc exp run -S section.key=value`, or the Prefect UI's Custom run form); the run "
        "writes it into `params.yaml`, as `dvc exp run` does, changing only that key's line. "
        "Each DVC stage declares the keys it reads in `dvc.yaml`, so a change reruns only the "
        "stages it affects. `registry`, `serve`, `schedule` and `monitor` are read by Prefect "
        "tasks, not DVC stages.",
        "",
    ]
    for section, field in Params.model_fields.items():
        lines += _section(section, field.annotation, values.get(section) or {}, MAPPING_VALUES)
    return "\n".join(lines) + "\n"


def _section(
    section: str, model: type, values: Mapping[str, Any], mapping_values: frozenset[str]
) -> list[str]:
    intro, guide = SECTION_GUIDE.get(section, ("", ""))
    lines = [f"## `{section}`", ""]
    if intro:
        lines += [f"{intro} See [the guide]({guide}).", ""]
    tables: list[tuple[str, list[str]]] = [(section, [])]
    blocks: list[str] = []
    for key, field, value in _leaves(section, model, values, mapping_values):
        group = key.rsplit(".", 1)[0]
        if group != tables[-1][0]:
            tables.append((group, []))
        if key in mapping_values:
            shown = "below"
            blocks += [f"`{key}` in `params.yaml`:", "", "```yaml", *_yaml(value), "```", ""]
        else:
            shown = _cell(f"`{_inline(value)}`")
        tables[-1][1].append(
            f"| `{key}` | {_type_name(field.annotation)} | {_accepts(field)} | {shown} "
            f"| {_prose(field.description or '')} |"
        )
    for group, rows in tables:
        if group != section:
            lines += [f"### `{group}`", ""]
        lines += [
            '<div class="params-table" markdown>',  # docs/stylesheets/extra.css: no key breaks
            "",
            "| key | type | accepts | in params.yaml | what it does |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "</div>",
            "",
        ]
    return lines + blocks


def _leaves(
    prefix: str, model: type, values: Mapping[str, Any], mapping_values: frozenset[str]
) -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, pydantic field, params.yaml value) of every key, in the models' order."""
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}"
        value = values.get(name) if isinstance(values, Mapping) else None
        if _is_section(field.annotation) and key not in mapping_values:
            yield from _leaves(key, field.annotation, value or {}, mapping_values)
        else:
            yield key, field, value


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "model_fields")


def _type_name(annotation: Any) -> str:
    """``int | None`` -> 'integer or null', ``tuple[int, ...]`` -> 'list of integer'."""
    annotation, _ = _unwrap(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return "choice"
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or annotation is dict:
        return "mapping"
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _accepts(field: Any) -> str:
    """The choices and bounds a field accepts beyond its type, per alternative."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    parts = _constraints(field.annotation, field.metadata)
    if "enum" in extra and not parts:  # a str field with a validator offers these in forms
        parts = [", ".join(f"`{_inline(choice)}`" for choice in extra["enum"])]
    accepted = ", or ".join(parts)
    if not field.is_required():  # params.yaml still names the key; the Prefect form may not
        accepted += f" (empty in the Prefect form: `{_inline(field.default)}`)"
    return _cell(accepted)


def _constraints(annotation: Any, metadata: list[Any]) -> list[str]:
    annotation, inner = _unwrap(annotation)
    metadata = [*metadata, *inner]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return [
            part or f"any {_type_name(arg)}"
            for arg in args
            for part in ["; ".join(_constraints(arg, metadata if arg is not type(None) else []))]
        ]
    if annotation is type(None):
        return ["`null`"]
    if origin is typing.Literal:
        return [", ".join(f"`{_inline(choice)}`" for choice in args)]
    if origin in (tuple, list):
        parts = _bounds(metadata)
        item = _constraints(args[0], []) if args else []
        each = "each one of" if typing.get_origin(_unwrap(args[0])[0]) is typing.Literal else "each"
        return ["; ".join([*parts, *(f"{each} {part}" for part in item)])] if parts or item else []
    bounds = _bounds(metadata)
    return ["; ".join(bounds)] if bounds else []


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[int, Field(ge=1)]`` -> (int, [Ge(1)]): the type and its constraints."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        for extra in extras:
            metadata += getattr(extra, "metadata", None) or [extra]
    return annotation, metadata


def _bounds(metadata: list[Any]) -> list[str]:
    parts = []
    for item in metadata:
        for attribute, sign in BOUNDS:
            if getattr(item, attribute, None) is not None:
                parts.append(f"{sign} {_number(getattr(item, attribute))}")
        if getattr(item, "min_length", None):
            parts.append("non-empty" if item.min_length == 1 else f"{item.min_length}+ items")
        if getattr(item, "max_length", None) is not None:
            parts.append(f"at most {item.max_length}")
        if getattr(item, "pattern", None):
            parts.append(f"matches `{item.pattern}`")
    return parts


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _inline(value: Any) -> str:
    """A value as params.yaml writes it: null, true, [32, 64]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return str(value)


def _yaml(value: Any) -> list[str]:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = None  # leaves on one line, mappings as blocks: as params.yaml
    stream = io.StringIO()
    yaml.dump(value, stream)
    return stream.getvalue().rstrip("\n").splitlines()


def _prose(text: str) -> str:
    """A description as plain text: ``<path>`` is no HTML tag, ``*`` no emphasis."""
    return _cell(html.escape(text, quote=False).replace("*", "\\*"))


def _cell(text: str) -> str:
    """Table-safe: a pipe or a line break would end the cell."""
    return " ".join(str(text).split()).replace("|", "\\|")
