"""Shared fixtures: an isolated environment, a shrunk params set, tiny generated data, a copy
of the project as a fresh clone, and a real ``mlflow server``."""

from __future__ import annotations

import os
import shutil
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
    FirstRun,
    copy_shipped_files,
    free_port,
    make_places,
    synthetic_dataset,
)
from tests.integration.helpers import MlflowService, PrefectServer, copy_project, run


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


@pytest.fixture(scope="session")
def processed_template(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params) -> Path:
    """A folder where the real preprocess stage (GX's split validation included) made
    ``data/processed`` from the tiny raw data once this session: ``processed_dir`` copies it
    (the stage takes ~20 s on a busy 2-core machine, and some 40 tests want its output)."""
    from tasks.stages.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("processed-template")
    raw = root / "data" / "raw"
    write_raw_dataset(synthetic_dataset(), raw, source="synthetic")
    run_preprocess(
        tiny_params.preprocess.model_copy(update={"val_fraction": 0.25, "test_fraction": 0.25}),
        raw,
        root / "data" / "processed",
        make_places(root),
    )
    return root


@pytest.fixture
def processed_dir(raw_dir: Path, tmp_path: Path, places, processed_template: Path) -> Path:
    """``data/processed`` made from the tiny raw data (``raw_dir``) by the real preprocess
    stage, with what that stage wrote beside it (``places``: the split validation's report,
    Data Docs, GX's results): a copy of the session's ``processed_template``."""
    for folder in ("gx", "reports", "data/processed"):
        shutil.copytree(processed_template / folder, tmp_path / folder, dirs_exist_ok=True)
    return tmp_path / "data" / "processed"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    no_gpu = not torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if no_gpu and "gpu" in item.keywords:
            item.add_marker(skip)
        # With pytest-xdist's --dist loadgroup (`make test`), a slow module's tests stay on one
        # worker: its module fixtures (a pipeline run, a server) are made once; the fast tests
        # go to whichever worker is free.
        if "slow" in item.keywords and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


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
def first_run(project_template: Path, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """A clone that ran `mlcycle run` once (champion v1, the temporary Prefect API, its own
    SQLite MLflow store) and committed the dvc.lock it wrote: the one full pipeline run the
    tests that need a trained project copy (``copy_project``) instead of running their own."""
    root = copy_project(project_template, tmp_path_factory.mktemp("ran"))
    # a deadline, not a speed check: on a busy 2-core machine this run has taken over 5 min
    result = run([str(Path(sys.executable).parent / "mlcycle"), "run"], cwd=root, timeout=900)
    run(["git", "add", "dvc.lock"], cwd=root)
    run(["git", "commit", "-qm", "the pipeline's first run"], cwd=root)
    return FirstRun(root, result.stdout + result.stderr)


@pytest.fixture(scope="session")
def ran_project(first_run: FirstRun) -> Path:
    """The session's trained clone (champion v1, dvc.lock committed): copy it
    (``copy_project``) before changing anything."""
    return first_run.root


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


@pytest.fixture(scope="session")
def prefect_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """The session's real ``prefect server start`` (a database of its own, a free loopback
    port, its UI told where its API is), for tests that add flow runs of their own and read
    them back by id. A test that stops or restarts a server, switches a service off, or leaves
    deployments whose runs a worker would pick up starts its own ``PrefectServer``."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"))
    server.server_settings.update(PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL=server.url)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_server(prefect_service: PrefectServer) -> str:
    """The session Prefect server's API URL (what ``PREFECT_API_URL`` names)."""
    return prefect_service.url


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
