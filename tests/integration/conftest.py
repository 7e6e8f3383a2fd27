"""Real components for integration tests: git+DVC copies of this repository, an ``mlflow
server`` process on a free loopback port, and the ``mlcycle`` CLI in subprocesses (Prefect's
ephemeral API)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import built_once
from tests.helpers import free_port
from tests.integration.helpers import MlflowService, copy_project, run


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a loopback port (``tasks.core.postgres``) with a
    database ``mlflow``: its plain ``postgresql://`` URL, or a skip that says what is missing."""
    import tempfile

    from tasks.core.postgres import PostgresUnavailable, start_cluster

    # outside pytest's root-only temp tree: as root, the cluster runs as `postgres`
    root = Path(tempfile.mkdtemp(prefix="mlcycle-postgres-"))
    try:
        cluster = start_cluster(root, free_port())
    except PostgresUnavailable as error:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(str(error))
    try:
        yield cluster.create_database("mlflow")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_mlflow_server(
    postgres_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real ``mlflow server`` on the PostgreSQL backend."""
    service = MlflowService(tmp_path_factory.mktemp("mlflow-postgres"), postgres_uri).start()
    yield service.uri
    service.stop()


@pytest.fixture(scope="session")
def dvc_reproduction(
    project_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A copy of the project that ran plain `dvc repro` once (its default SQLite MLflow store),
    and what DVC printed: test_dvc_pipeline's subject, and test_flow's reference outputs. Run
    once per session (all workers share it): read it, or copy it (``copy_project``) to
    change it."""

    def build(folder: Path) -> None:
        project = copy_project(project_template, folder)
        # the default store, whichever module asks first (test_flow points MLflow at a server)
        tracking = os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            output = run([sys.executable, "-m", "dvc", "repro"], cwd=project, timeout=900).stdout
        finally:
            if tracking is not None:
                os.environ["MLFLOW_TRACKING_URI"] = tracking
        (folder / "output.txt").write_text(output)

    folder = built_once(tmp_path_factory, "repro", build)
    return folder / "project", (folder / "output.txt").read_text()


@pytest.fixture(scope="session")
def reproduced(dvc_reproduction: tuple[Path, str]) -> Path:
    return dvc_reproduction[0]


@pytest.fixture(scope="session")
def reproduced_output(dvc_reproduction: tuple[Path, str]) -> str:
    return dvc_reproduction[1]
