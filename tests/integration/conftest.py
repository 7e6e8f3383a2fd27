"""Real components for integration tests: git+DVC copies of this repository, an ``mlflow
server`` process on a free loopback port, and the ``mlcycle`` CLI in subprocesses (Prefect's
ephemeral API)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.integration.helpers import MlflowService, PrefectServer


def _postgres_tools() -> dict[str, str] | None:
    import glob

    folders = [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    try:  # the PostgreSQL that the dev extra's pgserver wheel bundles
        import pgserver

        folders.append(str(Path(pgserver.__file__).parent / "pginstall" / "bin"))
    except ImportError:
        pass
    for folder in folders:
        tools = {name: shutil.which(name, path=folder) for name in ("initdb", "pg_ctl")}
        if all(tools.values()):
            return tools  # type: ignore[return-value]
    return None


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a loopback port (Debian's ``postgresql`` package),
    or a skip that says what is missing."""
    import tempfile

    tools = _postgres_tools()
    if tools is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    try:
        import psycopg2  # MLflow's PostgreSQL driver
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary)")
    # PostgreSQL refuses to run as root: as root, run it as Debian's `postgres` user, in a
    # folder of its own outside pytest's root-only temp tree.
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="mlcycle-postgres-"))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    port = free_port()
    data = root / "data"
    try:
        subprocess.run(
            [
                *as_user,
                tools["initdb"],
                "-D",
                str(data),
                "-U",
                "mlflow",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        subprocess.run(
            [
                *as_user,
                tools["pg_ctl"],
                "-D",
                str(data),
                "-l",
                str(root / "postgres.log"),
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"PostgreSQL did not start: {error.stderr or error.stdout}") from None
    try:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE mlflow")
        connection.close()
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"  # plain, as users write it
    finally:
        subprocess.run(
            [*as_user, tools["pg_ctl"], "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
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
