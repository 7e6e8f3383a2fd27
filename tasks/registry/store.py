"""The registry as MLflow holds it: the client, the aliases, and this room's errors."""

from __future__ import annotations

import logging
import re
from typing import Any

from tasks.core.errors import MlcycleError

log = logging.getLogger("mlcycle.registry")

CHAMPION = "champion"  # the served version
CHALLENGER = "challenger"  # the newest registered candidate
CHECK_PENDING, CHECK_PASSED, CHECK_FAILED = "pending", "passed", "failed"  # TAG_CHECK values
DECISION_PENDING = "pending"  # TAG_DECISION until the promotion gate decides
NOT_SERVED = "not served"  # TAG_DECISION of a version retired by a failed registration
SCORES = ("accuracy", "macro_f1")  # the test metrics a version records and the gate compares
# Version tags of the load-back check (beside TAG_CHECK in tasks/core/lineage.py): why it
# failed, and the md5 of the check record (test images and the scores the version gave them at
# registration, an .npz in the version's run) that later checks score against.
TAG_CHECK_REASON = "mlcycle.load_check_reason"
TAG_CHECK_RECORD = "mlcycle.check_record_md5"

_VERSION_NUMBER = re.compile(r"[1-9][0-9]*")


class RegistryError(MlcycleError):
    """The registry cannot do what was asked (nothing to register, unknown version ...)."""


def client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def alias_map(name: str) -> dict[str, str]:
    """Alias -> version number (as a string: MLflow hands back ints or strings by backend)."""
    return {alias: str(v) for alias, v in client().get_registered_model(name).aliases.items()}


def parse_version(text: str, what: str = "version") -> str:
    """A version number in canonical form (``3``, never ``03``, `` 3``, ``+3`` or ``3.0``), or
    RegistryError before anything is read: MLflow reads ``01`` as version 1 but aliases and
    tags compare the text, so a loose number moved or tagged the wrong version."""
    if not _VERSION_NUMBER.fullmatch(text):
        raise RegistryError(
            f"{what} {text!r} is not a version number: give it as `mlcycle models` lists it "
            "(a whole number from 1, without sign, spaces, decimals or leading zeros, e.g. 3)"
        )
    return text
