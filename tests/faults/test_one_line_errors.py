"""Issue 19, items 7 and 8: failures a user meets end in ONE line naming the file or URL at
fault and what to do (the README's promise), never a traceback; each from the try-out's command
in a clone that ran the pipeline once (champion v1).

The one translation point is ``flows.cli.main`` (``tasks.core.errors.user_error``); a stage
runs in a subprocess (``dvc repro``), which ends with its own ``error:`` line that the command
surfaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.integration.helpers import (
    BIN,
    copy_project,
    dvc,
    mlcycle,
    mlcycle_within_seconds,
    run,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture
def project(ran_project: Path, tmp_path: Path) -> Path:
    return copy_project(ran_project, tmp_path)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single `mlcycle: error:` line of a failed command; no traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("mlcycle: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def registered_versions(project: Path) -> list[str]:
    listing = mlcycle("models", cwd=project).stdout
    return [line.split()[0] for line in listing.splitlines()[2:]]


# --- item 7: a full disk during training ----------------------------------------------------


def tmpfs_mountable(folder: Path) -> bool:
    """Whether a throwaway tmpfs can be mounted here without root: an unprivileged user and
    mount namespace (``unshare -rm``), as most Linux kernels allow."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs '{folder}'"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_a_full_disk_while_training_names_the_model_file(project):
    """A real ENOSPC: `artifacts/` is a tmpfs with room for the epoch's checkpoint but not
    for the model file written after it (a mount namespace of the command's own)."""
    if not tmpfs_mountable(project / "artifacts"):
        pytest.skip("no unprivileged mount namespace (`unshare -rm`) for a small tmpfs here")
    checkpoint = project / "artifacts" / "checkpoints" / "last.pt"
    pages = -(-checkpoint.stat().st_size // 4096)  # a one-epoch checkpoint is no larger
    size_kib = (pages + 2) * 4  # model.pt (tens of KiB) does not fit in the two pages left
    script = f'mount -t tmpfs -o size={size_kib}k tmpfs artifacts && exec "$0" "$@"'
    command = ["unshare", "-rm", "sh", "-c", script, str(BIN / "mlcycle")]
    result = run([*command, "run", "--set", "train.epochs=1"], cwd=project, check=False)
    line = one_error_line(result)
    assert line.startswith("mlcycle: error: stage 'train' failed: artifacts/model.pt: "), line
    assert "cannot be written (No space left on device)" in line, line
    assert "df -h artifacts" in line, line  # what to do
    assert "exited with 1" not in line and "unexpected pos" not in result.stdout + result.stderr
    assert registered_versions(project) == ["1"]


# --- item 8: a truncated mlflow.db ----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [("models",), ("promote", "1"), ("monitor",), ("run",)],
    ids=["models", "promote", "monitor", "run"],
)
def test_a_truncated_mlflow_db_is_named_with_what_to_do(project, command):
    database = project / "mlflow.db"
    size = database.stat().st_size
    database.write_bytes(database.read_bytes()[:4096])
    line = one_error_line(mlcycle(*command, cwd=project, check=False))
    assert line == (
        "mlcycle: error: mlflow.db: not a usable MLflow database (file is truncated: 4,096 of "
        f"{size:,} bytes); restore it or point MLFLOW_TRACKING_URI elsewhere"
    )


def test_serving_names_a_truncated_mlflow_db_not_its_sql(project, monkeypatch):
    """`/ready` and `/metadata` show the load's last error: the same one line, not SQLAlchemy's
    statement and its link."""
    from tasks.serving.model import ModelHolder

    database = project / "mlflow.db"
    size = database.stat().st_size
    database.write_bytes(database.read_bytes()[:4096])
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    holder = ModelHolder("mlcycle-classifier", "champion")
    assert holder.reload() is False
    assert holder.last_error == (
        "mlflow.db: not a usable MLflow database (file is truncated: 4,096 of "
        f"{size:,} bytes); restore it or point MLFLOW_TRACKING_URI elsewhere"
    )


# --- item 8: a corrupt object in the DVC cache ----------------------------------------------


def corrupt_cache_object(project: Path, path: str) -> Path:
    """Flip bytes in the middle of the cache object of ``path`` (a file of data/processed),
    keeping its times, so DVC's own record of it still holds; then check it out."""
    md5 = run(["md5sum", path], cwd=project).stdout.split()[0]
    cached = project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    stat = cached.stat()
    cached.chmod(0o644)
    data = bytearray(cached.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2] = bytes(b ^ 0xFF for b in data[middle : middle + 2])
    cached.write_bytes(bytes(data))
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cached.chmod(0o444)
    shutil.rmtree(project / Path(path).parent)
    dvc("checkout", cwd=project)
    return cached


def test_a_corrupt_dvc_cache_object_is_named_before_a_stage_reads_it(project):
    cached = corrupt_cache_object(project, "data/processed/train.npz")
    # what the try-out saw: DVC counts the corrupt checkout as up to date
    assert "Data and pipelines are up to date." in dvc("status", cwd=project).stdout
    result = mlcycle("run", "--set", "train.seed=3", cwd=project, check=False)  # retrains
    line = one_error_line(result)
    assert line.startswith(
        "mlcycle: error: data/processed/train.npz: its bytes are not what dvc.lock records"
    ), line
    assert str(cached.relative_to(project)) in line and "is damaged" in line, line
    assert "`dvc pull data/processed`" in line, line
    assert "BadZipFile" not in result.stdout + result.stderr
    assert registered_versions(project) == ["1"]


# --- item 8: an unreachable PREFECT_API_URL -------------------------------------------------


@pytest.mark.parametrize("command", [("run",), ("promote", "1")], ids=["run", "promote"])
def test_an_unreachable_prefect_api_is_one_line_naming_it_at_once(project, command):
    url = f"http://127.0.0.1:{free_port()}/api"
    # at once: within seconds of the command's start (it was 3 tracebacks after Prefect's retries)
    result = mlcycle_within_seconds(*command, cwd=project, PREFECT_API_URL=url)
    line = one_error_line(result)
    assert line.startswith(f"mlcycle: error: PREFECT_API_URL {url}: the Prefect API does not"), line
    assert "unset PREFECT_API_URL" in line, line
    # before anything of the run: no MLflow run, no params.yaml written, nothing registered
    assert run(["git", "status", "--porcelain", "params.yaml"], cwd=project).stdout == ""
