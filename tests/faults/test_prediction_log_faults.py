"""The prediction log's faults, as the hostile try-out met them (issue 19, items 3, 5, 8, 9):
`mlcycle serve` and `mlcycle monitor` as real processes in a clone that ran the pipeline once
(champion v1), a real SQLite file removed under the server, a real write limit on it, and
broken inputs handed to `mlcycle monitor`. Each test checks what the user sees: the HTTP
answers, the server's log, the file on disk, and the one `mlcycle: error:` line.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest

from tasks.core.files import read_split
from tests.helpers import free_port
from tests.integration.helpers import copy_project, mlcycle, run, serving, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LOG = Path("data/serving/predictions.sqlite")
NOTICED_WITHIN_S = 5  # a removed log file is back this soon, traffic or not


@pytest.fixture(scope="module")
def project(ran_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(ran_project, tmp_path_factory.mktemp("prediction-log"))


@pytest.fixture(scope="module")
def test_images(project: Path) -> np.ndarray:
    """Held-out images of the project's data, as many as monitor.min_rows wants and more."""
    test, _ = read_split(project / "data" / "processed", "test")
    return np.concatenate([test.images] * (1 + 300 // len(test.images)))[:300]


def logged_rows(path: Path) -> int:
    """Rows in the log file at ``path`` as a reader opening it now sees them (0: no file)."""
    import sqlite3

    if not path.is_file():
        return 0
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    finally:
        connection.close()


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `mlcycle: error:` line of a failed command, with no traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    [line] = [text for text in result.stderr.splitlines() if text.startswith("mlcycle: error:")]
    return line


# --- item 3: `rm data/serving/predictions.sqlite*` while `mlcycle serve` runs ----------------


def test_a_log_removed_under_serve_is_started_again_and_the_gap_reported(project, test_images):
    log = project / LOG
    with serving(project, port=free_port()) as app:
        before = app.predict(test_images[:50])
        wait_until(lambda: logged_rows(log) == 50, "the first 50 predictions logged")

        for path in log.parent.glob(f"{log.name}*"):  # rm data/serving/predictions.sqlite*
            path.unlink()
        wait_until(log.is_file, "a new log file", NOTICED_WITHIN_S)  # no traffic needed
        wait_until(lambda: "was removed or replaced while serving" in app.output, "a warning")
        warning = next(line for line in app.lines if "removed or replaced" in line)
        assert str(LOG) in warning and "the 50 rows the old file held are not in it" in warning

        after = app.predict(test_images[50:300])
        wait_until(lambda: logged_rows(log) == 250, "the 250 later predictions in the new file")
        meta = httpx.get(f"{app.url}/metadata", timeout=10).json()["prediction_log"]
        assert (meta["recreated"], meta["lost"], meta["written"]) == (1, 50, 300), meta
        metrics = httpx.get(f"{app.url}/metrics", timeout=10).text
        assert "mlcycle_prediction_log_recreated_total 1.0" in metrics
        assert "mlcycle_prediction_log_lost_rows_total 50.0" in metrics

        gone = app.feedback(before[0])
        assert gone.status_code == 404 and "removed or replaced" in gone.json()["detail"]
        stored = app.feedback(after[0])
        assert stored.status_code == 200 and stored.json()["stored"] == 1, stored.text

    monitored = mlcycle("monitor", "--window", "250", cwd=project, check=False)
    assert monitored.returncode in (0, 3), monitored.stdout + monitored.stderr
    assert "newest 250 predictions of version 1" in monitored.stdout, monitored.stdout


# --- item 5: a prediction whose row the full disk dropped, and --batch labels out of range ----


def test_feedback_for_a_prediction_the_full_disk_never_logged_says_so(project, test_images):
    log = project / LOG
    with serving(project, port=free_port()) as app:
        logged = app.predict(test_images[:3])
        wait_until(lambda: app.feedback(logged[0]).status_code == 200, "the first label stored")
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # The disk is full for the server: every write of its past the first byte fails.
        resource.prlimit(app.process.pid, resource.RLIMIT_FSIZE, (1, hard))
        try:
            unlogged = app.predict(test_images[3:6])  # answered all the same
            wait_until(lambda: "prediction log write failed" in app.output, "a failed write")
        finally:
            resource.prlimit(app.process.pid, resource.RLIMIT_FSIZE, (soft, hard))
        refused = app.feedback(unlogged[0])
        detail = refused.json()["detail"]
        assert refused.status_code == 503, refused.text
        assert f"{unlogged[0]} was answered but never logged" in detail
        assert f"writing it to {LOG} failed" in detail and "free disk space" in detail
        assert app.feedback(logged[1]).status_code == 200  # room again: labels are stored
    assert logged_rows(log) >= 3


def batch_file(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, images=images, labels=labels)
    return path


@pytest.mark.parametrize(
    ("make_labels", "make_images", "expected"),
    [
        (  # item 5: -7 was read as "no label" (silently judged unlabelled), 99 refused
            lambda n: np.full(n, -7),
            lambda images: images,
            "'labels' holds -7, outside the classes; expected one class index 0-",
        ),
        (  # item 8: string labels were a ValueError traceback
            lambda n: np.asarray(["cat"] * n),
            lambda images: images,
            "'labels' must hold one class index 0-",
        ),
        (  # item 8: 2-channel images were a traceback from the channel conversion
            lambda n: np.zeros(n, dtype=np.int64),
            lambda images: np.concatenate([images, images], axis=-1),
            "'images' has shape (250, 8, 8, 2); expected (N, H, W) or (N, H, W, C) with C 1 or 3",
        ),
    ],
    ids=["labels-minus-7", "string-labels", "two-channel-images"],
)
def test_a_batch_with_labels_or_images_outside_the_model_is_refused_by_name(
    project, test_images, tmp_path, make_labels, make_images, expected
):
    images = test_images[:250]
    batch = batch_file(tmp_path / "batch.npz", make_images(images), make_labels(len(images)))
    line = error_line(mlcycle("monitor", "--batch", str(batch), cwd=project, check=False))
    assert line.startswith(f"mlcycle: error: {batch}: ") and expected in line, line


# --- item 8: a corrupt prediction log, a full reports/monitoring/ -----------------------------


def write_log(path: Path, model_name: str, rows: int) -> None:
    """A prediction log of ``rows`` predictions of ``model_name`` v1, by the real writer."""
    from dataclasses import replace

    from tasks.core.prediction_log.writer import PredictionLog
    from tests.unit.test_serve import served_model

    model = replace(served_model(), name=model_name, version="1")
    images = np.zeros((rows, *model.raw_shape), dtype=np.uint8)
    probabilities = np.full((rows, len(model.class_names)), 1 / len(model.class_names))
    log = PredictionLog(path, max_rows=rows).start()
    log.record(model, "/predict", images, probabilities)
    log.close()
    assert logged_rows(path) == rows


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_prediction_log_is_one_line_naming_it(project, tmp_path, damage):
    from tasks.core.config import load_params

    workspace = copy_project(project, tmp_path)
    log = workspace / LOG
    for path in log.parent.glob(f"{log.name}*"):
        path.unlink()
    write_log(log, load_params(workspace / "params.yaml").registry.model_name, rows=2000)
    if damage == "garbage":
        log.write_bytes(b"not a database, " * 400)
    else:
        for path in log.parent.glob(f"{log.name}-*"):  # its WAL gone: the truncation is all
            path.unlink()
        with log.open("r+b") as handle:
            handle.truncate(log.stat().st_size // 3)
    line = error_line(mlcycle("monitor", cwd=workspace, check=False))
    assert line.startswith(f"mlcycle: error: {LOG}: not a readable prediction log ("), line
    assert "move it aside" in line


# `mlcycle monitor` with a full disk under reports/monitoring/: the report's write fails with
# ENOSPC (made by hand: a real full file system needs root to mount), all else as the CLI runs.
FULL_REPORTS = """
    import errno, os, pathlib, sys
    write_text = pathlib.Path.write_text
    def full(self, *args, **kwargs):
        if "monitoring" in self.parts:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_text(self, *args, **kwargs)
    pathlib.Path.write_text = full
    from flows.cli import console_main
    sys.argv[0] = "mlcycle"
    console_main()
"""


def test_a_full_reports_folder_is_one_line_naming_the_report(project, test_images, tmp_path):
    batch = batch_file(tmp_path / "batch.npz", test_images[:250], np.zeros(250, dtype=np.int64))
    script = tmp_path / "mlcycle_full_reports.py"
    script.write_text(textwrap.dedent(FULL_REPORTS))
    command = [sys.executable, str(script), "monitor", "--batch", str(batch)]
    result = run(command, cwd=project, check=False)
    line = error_line(result)
    assert line.startswith("mlcycle: error: reports/monitoring/") and ".html: cannot be" in line
    assert os.strerror(errno.ENOSPC) in line and "with room left" in line, line
    assert not list((project / "reports" / "monitoring").glob(".*.tmp"))  # no half-written page


# --- item 9: `mlcycle monitor` reads the log `mlcycle serve --prediction-log PATH` wrote -------


def test_monitor_reads_the_log_serve_wrote_elsewhere(project, test_images, tmp_path):
    elsewhere = tmp_path / "elsewhere.sqlite"
    with serving(project, "--prediction-log", str(elsewhere), port=free_port()) as app:
        app.predict(test_images[:250])
        wait_until(lambda: logged_rows(elsewhere) == 250, "250 predictions logged elsewhere")
    args = ("monitor", "--window", "250", "--prediction-log", str(elsewhere))
    monitored = mlcycle(*args, cwd=project, check=False)
    assert monitored.returncode in (0, 3), monitored.stdout + monitored.stderr
    assert f"{elsewhere}: newest 250 predictions of version 1" in monitored.stdout

    missing = tmp_path / "none.sqlite"
    args = ("monitor", "--prediction-log", str(missing))
    line = error_line(mlcycle(*args, cwd=project, check=False))
    assert f"{missing}: no such prediction log" in line, line
