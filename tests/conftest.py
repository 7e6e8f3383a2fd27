"""Shared fixtures: an isolated environment, a shrunk params set, tiny generated data, a copy
of the project as a fresh clone, and a real ``mlflow server``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tasks  # noqa: F401  (telemetry switches)
from tasks.core.config import Params, apply_params, load_params
from tasks.core.files import write_raw_dataset
from tests.helpers import (
    REPO_ROOT,
    TINY_OVERRIDES,
    copy_shipped_files,
    free_port,
    make_places,
    synthetic_dataset,
)
from tests.integration.helpers import MlflowService, copy_project, run


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep tests away from the developer's ~/.prefect, ./mlflow.db and any live run."""
    home = tmp_path_factory.mktemp("prefect-home")
    saved = dict(os.environ)
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
    for name in (
        "MLFLOW_RUN_ID",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "PREFECT_API_URL",
    ):
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real MLflow SQLite store in a temp folder (artifacts beside it)."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # MLflow also keeps a process-wide copy
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    return load_params(REPO_ROOT / "params.yaml", overrides=TINY_OVERRIDES)


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """A tiny canonical ``data/raw`` folder."""
    path = tmp_path / "data" / "raw"
    write_raw_dataset(synthetic_dataset(), path, source="synthetic")
    return path


@pytest.fixture
def places(tmp_path: Path):
    return make_places(tmp_path)


@pytest.fixture
def processed_dir(raw_dir: Path, tmp_path: Path, tiny_params: Params, places) -> Path:
    """``data/processed`` made from the tiny raw data by the real preprocess stage."""
    from tasks.stages.preprocess import run_preprocess

    path = tmp_path / "data" / "processed"
    run_preprocess(
        tiny_params.preprocess.model_copy(update={"val_fraction": 0.25, "test_fraction": 0.25}),
        raw_dir,
        path,
        places,
    )
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def project_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repository's files (as git would ship them) in a fresh git repo, shrunk params."""
    root = copy_shipped_files(tmp_path_factory.mktemp("template") / "project")
    params_file = root / "params.yaml"
    # its own serving port: a deploy step must never talk to an app the developer runs
    overrides = [*TINY_OVERRIDES, f"serve.port={free_port()}"]
    apply_params(load_params(params_file, overrides=overrides), params_file)
    run(["git", "init", "-q"], cwd=root)
    run(["git", "add", "-A"], cwd=root)
    run(["git", "commit", "-qm", "project under test"], cwd=root)
    return root


@pytest.fixture(scope="session")
def ran_project(project_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone that ran `mlcycle run` once (champion v1) and committed the dvc.lock it wrote:
    copy it (``copy_project``) before changing anything."""
    root = copy_project(project_template, tmp_path_factory.mktemp("ran"))
    run([str(Path(sys.executable).parent / "mlcycle"), "run"], cwd=root)
    run(["git", "add", "dvc.lock"], cwd=root)
    run(["git", "commit", "-qm", "the pipeline's first run"], cwd=root)
    return root


@pytest.fixture
def fresh_project(project_template: Path, tmp_path: Path) -> Path:
    """A clean clone-like copy of the project, no outputs yet."""
    return copy_project(project_template, tmp_path)


@pytest.fixture(scope="session")
def mlflow_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowService]:
    """A real ``mlflow server`` (SQLite backend, proxied artifacts) on a free loopback port."""
    service = MlflowService(tmp_path_factory.mktemp("mlflow-server")).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_service: MlflowService) -> str:
    return mlflow_service.uri


def build_site(out: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of this repository's site into ``out``, as `make docs` does."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )


@pytest.fixture(scope="session")
def docs_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation site as `make docs` builds it, once per session (the docs tests and
    the browser tests read the same build)."""
    out = tmp_path_factory.mktemp("site")
    result = build_site(out)
    assert result.returncode == 0, result.stderr[-4000:]
    return out
