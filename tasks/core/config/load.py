"""Reading ``params.yaml`` once, strictly: parse, name every missing or bad key in one line,
apply ``section.key=value`` overrides the way ``dvc exp run -S`` does."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAMLError

from tasks.core.config.base import ConfigError
from tasks.core.config.params import Params
from tasks.core.config.yaml_text import safe_yaml
from tasks.core.paths import PARAMS_FILE


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


def read_params_tree(path: Path = PARAMS_FILE) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the repository root")
    try:
        tree = safe_yaml().load(path.read_text())
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
        node[leaf] = safe_yaml().load(raw) if raw.strip() else raw
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
