"""What the monitor compares against: the version ``serve.alias`` points at (what the app
serves) and the monitoring reference the evaluate stage logged to that version's MLflow run
(``monitoring/`` artifacts).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasks.core.config import Params
from tasks.core.errors import MlcycleError
from tasks.core.tracking import ModelVersionNotFound, get_model_version
from tasks.monitoring.reference import (
    REFERENCE_ARTIFACT_DIR,
    REFERENCE_FILE_NAME,
    Reference,
    load_reference,
)


class MonitorError(MlcycleError):
    """Nothing to monitor (no served version, no reference) or a batch that cannot be read."""


@dataclass(frozen=True)
class Served:
    name: str
    alias: str
    version: str
    run_id: str


def served_version(params: Params) -> Served:
    """The version ``serve.alias`` (champion) points at: what the app serves."""
    name, alias = params.registry.model_name, params.serve.alias
    try:
        version = get_model_version(name, alias=alias)
    except ModelVersionNotFound:
        raise MonitorError(
            f"no version of '{name}' has the alias '{alias}': nothing is served yet "
            "(`mlcycle run` trains, registers and promotes one)"
        ) from None
    return Served(name, alias, str(version.version), version.run_id)


def served_reference(served: Served) -> Reference:
    """The reference the evaluate stage logged to the served version's run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    artifact = f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE_NAME}"
    with tempfile.TemporaryDirectory(prefix="mlcycle-reference-") as folder:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=served.run_id, artifact_path=artifact, dst_path=folder
            )
        except (MlflowException, OSError) as error:
            raise MonitorError(
                f"{served.name} version {served.version} has no monitoring reference that can "
                f"be read ({artifact} of run {served.run_id}: {type(error).__name__}); the "
                "evaluate stage logs one for every version it evaluates: `mlcycle run` "
                "registers a version that has one"
            ) from None
        return load_reference(Path(path))
