"""A throwaway PostgreSQL cluster on a loopback port, from the server binaries on this machine
(Debian's ``postgresql`` package, or the ones the ``pgserver`` wheel bundles): what the tests,
the soak benchmark and a one-machine team stack run Prefect, MLflow and Optuna on.

PostgreSQL refuses to run as root: as root, the cluster runs as Debian's ``postgres`` user, in
a folder of its own that user can enter.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tasks.core.errors import MlcycleError

SUPERUSER = "mlcycle"


class PostgresUnavailable(MlcycleError):
    """No PostgreSQL server binaries here, or the cluster would not start."""


def server_tools() -> dict[str, str] | None:
    """``initdb`` and ``pg_ctl``: on PATH, Debian's newest, or pgserver's; None if none."""
    folders = [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in [*folders, "pgserver"]:
        if folder == "pgserver":  # imported last: it warns about the runtime folder
            try:
                import pgserver
            except ImportError:
                return None
            folder = str(Path(pgserver.__file__).parent / "pginstall" / "bin")
        tools = {name: shutil.which(name, path=folder) for name in ("initdb", "pg_ctl")}
        if all(tools.values()):
            return tools  # type: ignore[return-value]
    return None


@dataclass
class PostgresCluster:
    """A cluster in ``root`` serving 127.0.0.1:``port``, superuser ``mlcycle`` (trust auth)."""

    root: Path
    port: int
    tools: dict[str, str]
    as_user: tuple[str, ...] = ()

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresCluster:
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root without runuser: cannot start it")
            self.as_user = ("runuser", "-u", "postgres", "--")
            shutil.chown(self.root, "postgres")
        initdb = [self.tools["initdb"], "-D", str(self.data), "-U", SUPERUSER, "--auth=trust"]
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "postgres.log")
        try:
            self._run([*initdb, "-E", "UTF8"])
            self._run(
                [
                    self.tools["pg_ctl"],
                    "-D",
                    str(self.data),
                    "-l",
                    log,
                    "-o",
                    options,
                    "-w",
                    "start",
                ]
            )
        except subprocess.CalledProcessError as error:
            raise PostgresUnavailable(
                f"PostgreSQL did not start in {self.root}: {error.stderr or error.stdout}"
            ) from None
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name``; its plain ``postgresql://`` URL."""
        import psycopg2

        connection = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres"
        )
        connection.autocommit = True
        connection.cursor().execute(f'CREATE DATABASE "{name}"')
        connection.close()
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, self.tools["pg_ctl"], "-D", str(self.data), "-m", "fast", "-w", "stop"],
            capture_output=True,
        )

    def _run(self, command: list[str]) -> None:
        subprocess.run([*self.as_user, *command], check=True, capture_output=True, text=True)


def start_cluster(root: Path, port: int) -> PostgresCluster:
    """A new cluster in ``root`` (created; must be new) on ``port``; PostgresUnavailable why not."""
    tools = server_tools()
    if tools is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
        )
    root.mkdir(parents=True, exist_ok=True)
    return PostgresCluster(root, port, tools).start()
