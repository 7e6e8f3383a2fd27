"""The one writer of ``params.yaml``: make the file hold a params object, editing only the
lines of keys whose values changed (as ``dvc exp run --set-param`` writes overrides)."""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAMLError

from tasks.core.config.base import ConfigError
from tasks.core.config.load import load_params, parse_params
from tasks.core.config.params import Params
from tasks.core.config.yaml_text import edit_params_text, rewrite, safe_yaml
from tasks.core.console import run_logger
from tasks.core.files import atomic_path
from tasks.core.paths import PARAMS_FILE


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
        edited = rewrite(text, wanted)
    if edited != text:
        with atomic_path(path) as tmp:
            tmp.write_text(edited)
    for key, old, new in changes:
        run_logger("mlcycle.config").info("params.yaml: %s %r -> %r", key, old, new)
    return load_params(path)


def _holds(text: str, params: Params) -> bool:
    """Whether ``text``, read as params.yaml, is ``params``."""
    try:
        return parse_params(safe_yaml().load(text)) == params
    except (YAMLError, ConfigError):
        return False
