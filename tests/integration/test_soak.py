"""The soak benchmark, short: ten minutes in which nobody triggers anything. One drift episode
must be detected by the scheduled monitor, retrained once through the drift trigger (after
its delay, once labels of the new population came back), served by the alias, answered
correctly afterwards and no longer called drift; no prediction or label may be lost, no two
trainings may overlap, and the Prefect server may log no ERROR. The figures are the ones
`bench/soak.py` writes for the full run (README: the soak table)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.slow

MINUTES = 10  # a three-minute clean warm-up and one seven-minute episode


def test_ten_unattended_minutes_retrain_once_per_episode_and_lose_nothing(tmp_path: Path):
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "bench/soak.py", "--minutes", str(MINUTES), "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=MINUTES * 60 + 900,
    )
    assert out.is_file(), result.stdout[-4000:] + result.stderr[-4000:]
    figures = json.loads(out.read_text())
    [episode] = figures["episodes"]
    report = json.dumps(episode) + "\n" + result.stdout[-3000:]
    assert episode["detected_s"] is not None and episode["detected_s"] <= 150, report
    assert episode["trainings"] == 1 and episode["training_states"] == ["COMPLETED"], report
    assert episode["training_reasons"][0].startswith("drift: "), report
    assert episode["served_s"] is not None and episode["served_version_after"] == 2, report
    assert episode["labelled_after"] >= 100, report
    assert episode["accuracy_after"] >= figures["clean_accuracy"] - 0.02, report
    assert episode["accuracy_before"] < episode["accuracy_after"] - 0.1, report
    # The retrained model's monitoring reference is the new population: no more drift alarms.
    assert episode["drift_after_served"] == 0, figures["verdicts"]
    # clean traffic raised no alarm (a monitor run in the first seconds, before the window had
    # min_rows, says "not enough data", as it should)
    clean = {verdict for at, verdict in figures["verdicts"] if at < episode["onset_s"]}
    assert "ok" in clean and "drift" not in clean, figures["verdicts"]
    assert figures["predictions_sent"] > 10_000
    assert figures["predictions_logged"] == figures["predictions_sent"]
    assert figures["feedback_stored"] == figures["feedback_sent"] > 5_000
    assert figures["overlapping_trainings"] == 0
    assert figures["server_errors"] == 0, figures["server_error_lines"]
    assert result.returncode == 0, result.stdout[-3000:]
