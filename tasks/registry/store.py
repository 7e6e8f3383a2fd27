"""The registry as MLflow holds it: the client, the aliases, and this room's errors."""

from __future__ import annotations

import logging
from typing import Any

from tasks.core.errors import MlcycleError

log = logging.getLogger("mlcycle.registry")

CHAMPION = "champion"  # the served version
CHALLENGER = "challenger"  # the newest registered candidate
CHECK_PENDING, CHECK_PASSED, CHECK_FAILED = "pending", "passed", "failed"  # TAG_CHECK values
SCORES = ("accuracy", "macro_f1")  # the test metrics a version records and the gate compares


class RegistryError(MlcycleError):
    """The registry cannot do what was asked (nothing to register, unknown version ...)."""


def client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def alias_map(name: str) -> dict[str, str]:
    """Alias -> version number (as a string: MLflow hands back ints or strings by backend)."""
    return {alias: str(v) for alias, v in client().get_registered_model(name).aliases.items()}
