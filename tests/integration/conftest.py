"""Real components for integration tests: git+DVC copies of this repository, an ``mlflow
server`` process on a free loopback port, and the ``mlcycle`` CLI in subprocesses (Prefect's
ephemeral API)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.integration.helpers import MlflowService, PrefectServer


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
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``prefect server start`` on a free loopback port, with its own database; yields
    its API URL (what ``PREFECT_API_URL`` names)."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server")).start()
    try:
        yield server.url
    finally:
        server.stop()
