"""The soak benchmark at the test suite's pace: a few minutes in which nobody triggers
anything. Clean traffic first (the scheduled monitor says ok, nothing retrains), then one drift
episode, which must be detected by the scheduled monitor, retrained once through the drift
trigger (after its delay, once labels of the new population came back), served by the alias,
answered correctly afterwards and no longer called drift; no prediction or label may be lost,
no two trainings may overlap, and the Prefect server may log no ERROR.

`bench/soak.py --quick`: the same loop as the 24-minute benchmark (`make soak`; the README's
soak table), with monitoring every 15 s instead of every minute, four times the traffic, and an
episode that ends once the retrained model has answered for 30 s (8 minutes at most)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


# A deadline, not a speed check: the first training, 30 s of clean traffic and an episode of 8
# minutes at most; on a loaded 2-core machine the first `mlcycle run` alone took 10 minutes.
DEADLINE_S = 1500


def run_soak(out: Path) -> subprocess.CompletedProcess[str]:
    """`bench/soak.py --quick --json out`; past the deadline it is stopped with Ctrl-C, so it
    stops the servers, the app and the worker it started (each in a session of its own)."""
    process = subprocess.Popen(
        [sys.executable, "bench/soak.py", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
        message = f"bench/soak.py --quick ran past {DEADLINE_S} s:\n{stdout[-3000:]}"
        raise AssertionError(message) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_unattended_traffic_retrains_once_per_drift_episode_and_loses_nothing(tmp_path: Path):
    out = tmp_path / "soak.json"
    result = run_soak(out)
    assert out.is_file(), result.stdout[-4000:] + result.stderr[-4000:]
    figures = json.loads(out.read_text())
    [episode] = figures["episodes"]
    report = json.dumps(episode) + "\n" + result.stdout[-3000:]
    assert episode["detected_s"] is not None, report
    assert episode["detected_s"] <= figures["detection_limit_s"], report
    assert episode["trainings"] == 1 and episode["training_states"] == ["COMPLETED"], report
    assert episode["training_reasons"][0].startswith("drift: "), report
    assert episode["served_s"] is not None and episode["served_version_after"] == 2, report
    assert episode["labelled_after"] >= 100, report
    assert episode["accuracy_after"] >= figures["clean_accuracy"] - 0.02, report
    assert episode["accuracy_before"] < episode["accuracy_after"] - 0.1, report
    # The retrained model's monitoring reference is the new population: no more drift alarms.
    assert episode["drift_after_served"] == 0, figures["verdicts"]
    # Clean traffic raised no alarm and started no training (a monitor run in the first
    # seconds, before the window had min_rows, says "not enough data", as it should).
    clean = {verdict for at, verdict in figures["verdicts"] if at < episode["onset_s"]}
    assert "ok" in clean and "drift" not in clean, figures["verdicts"]
    assert figures["trainings_started"] == 2  # the first champion's `mlcycle run`, the drift's
    # nothing lost: every prediction logged, every label stored
    assert figures["predictions_sent"] > 5_000
    assert figures["predictions_logged"] == figures["predictions_sent"]
    assert figures["feedback_stored"] == figures["feedback_sent"] > 2_500
    assert figures["overlapping_trainings"] == 0
    assert figures["server_errors"] == 0, figures["server_error_lines"]
    assert result.returncode == 0, result.stdout[-3000:]
