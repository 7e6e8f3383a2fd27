"""The thin @task wrappers run the very same stage functions under a real Prefect API."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow
from prefect.testing.utilities import prefect_test_harness

from tasks.stages.collect import collect_task, run_collect
from tasks.stages.evaluate import evaluate_task, run_evaluate
from tasks.stages.preprocess import preprocess_task, run_preprocess
from tasks.stages.train import run_train, train_task
from tasks.stages.validate import run_validate, validate_task
from tests.helpers import REPO_ROOT, make_places

pytestmark = pytest.mark.slow


def digest(folder: Path) -> dict[str, str]:
    """Content hashes of every output, except GX's own run records and Data Docs, which carry
    run times by design."""
    return {
        p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not p.relative_to(folder).as_posix().startswith(("gx/", "reports/data_docs/"))
    }


def test_prefect_tasks_and_plain_functions_give_the_same_outputs(tiny_params, tmp_path):
    @flow
    def stages_as_tasks(root: Path) -> float:
        places = make_places(root)
        collect_task(tiny_params.collect, root / "raw")
        validate_task(tiny_params.validate, root / "raw", root / "validated", places)
        preprocess_task(tiny_params.preprocess, root / "validated", root / "processed", places)
        train_task(
            tiny_params.train,
            root / "processed",
            root / "model.pt",
            root / "ckpt",
            root / "reports",
        )
        return evaluate_task(
            tiny_params.evaluate, root / "model.pt", root / "processed", root / "reports"
        ).accuracy

    with prefect_test_harness(server_startup_timeout=120):
        accuracy = stages_as_tasks(tmp_path / "tasks")

    plain = tmp_path / "plain"
    places = make_places(plain)
    run_collect(tiny_params.collect, plain / "raw")
    run_validate(tiny_params.validate, plain / "raw", plain / "validated", places)
    run_preprocess(tiny_params.preprocess, plain / "validated", plain / "processed", places)
    run_train(
        tiny_params.train,
        plain / "processed",
        plain / "model.pt",
        plain / "ckpt",
        plain / "reports",
    )
    assert (
        run_evaluate(
            tiny_params.evaluate, plain / "model.pt", plain / "processed", plain / "reports"
        ).accuracy
        == accuracy
    )
    assert digest(tmp_path / "tasks") == digest(plain)


def test_python_m_flows_training_is_the_run_command():
    result = subprocess.run(
        [sys.executable, "-m", "flows.training", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--set SECTION.KEY=VALUE" in result.stdout
