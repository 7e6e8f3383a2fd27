"""`python -m flows.training` is the command `mlcycle run` is."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO_ROOT


def test_python_m_flows_training_is_the_run_command():
    result = subprocess.run(
        [sys.executable, "-m", "flows.training", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--set SECTION.KEY=VALUE" in result.stdout
