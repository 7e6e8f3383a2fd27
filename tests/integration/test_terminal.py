"""What the terminal shows of the commands a user runs: no progress bar redrawn with carriage
returns (MLflow's tqdm "Downloading artifacts" made one 1,600-character line of each
registration), and no "View at" link to the temporary Prefect server, which stops with the
command; on PREFECT_API_URL's server, which stays, the link stays too."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tasks.core.files import read_split
from tests.helpers import FirstRun, free_port
from tests.integration.helpers import BIN, copy_project, mlcycle, wait_for_http

pytestmark = pytest.mark.slow

DEAD_LINK = re.compile(r"View at http://127\.0\.0\.1:\d+/")


@pytest.fixture(scope="module")
def ran(first_run: FirstRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the session's clone that ran `mlcycle run` once (temporary Prefect API), and
    all that run printed."""
    return copy_project(first_run.root, tmp_path_factory.mktemp("terminal")), first_run.output


def assert_no_progress_bar(output: str) -> None:
    assert "Downloading artifacts" not in output, output[-3000:]
    assert "\r" not in output, [line for line in output.splitlines() if "\r" in line][:3]
    assert not re.search(r"\d+%\|", output), output[-3000:]  # a tqdm bar, whoever draws it


def test_a_pipeline_run_shows_no_progress_bar_and_no_dead_link(ran):
    _, output = ran
    assert re.search(r"registered: mlcycle-classifier version 1", output)  # it downloaded
    assert_no_progress_bar(output)
    assert not DEAD_LINK.search(output), DEAD_LINK.search(output).group(0)
    # instead: where the run can be browsed once `make prefect-ui` serves the same database
    flow_run = r"http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}"
    assert re.search(rf"\n  Prefect flow run: {flow_run}\n", output), output
    assert re.search(r"\n  make prefect-ui +# then open the flow run link above\n", output)


def test_models_lists_each_version_with_its_model_family(ran):
    root, _ = ran
    result = mlcycle("models", cwd=root)
    header, row = result.stdout.splitlines()[1:3]
    assert header.split()[:4] == ["version", "aliases", "model", "accuracy"], header
    assert row.split()[:3] == ["1", "challenger,champion", "cnn"], row
    assert_no_progress_bar(result.stdout + result.stderr)


def test_serve_loads_the_champion_without_a_progress_bar(ran):
    root, _ = ran
    port = free_port()
    log = root / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(BIN / "mlcycle"), "serve", "--port", str(port)],
            cwd=root,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ready", process, log)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert_no_progress_bar(log.read_text())


def test_monitor_on_a_real_prefect_server_keeps_its_view_at_link(ran, prefect_service, tmp_path):
    root, _ = ran
    test, _ = read_split(root / "data" / "processed", "test")
    batch = tmp_path / "batch.npz"
    np.savez(batch, images=test.images, labels=test.labels)
    result = mlcycle(
        "monitor",
        "--batch",
        str(batch),
        cwd=root,
        check=False,
        PREFECT_API_URL=prefect_service.url,
        PREFECT_HOME=str(prefect_service.root),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"View at http://127.0.0.1:{prefect_service.port}/runs/flow-run/" in output, output
    assert_no_progress_bar(output)
