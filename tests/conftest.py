"""Shared fixtures: an isolated environment, a shrunk params set, tiny generated data, a copy
of the project as a fresh clone, and a real ``mlflow server``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
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

# What MLflow keeps per process: set_tracking_uri also exports MLFLOW_TRACKING_URI, so every
# later subprocess (an `mlcycle` command of another module) would use that store.
MLFLOW_PROCESS_SETTINGS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
)


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep tests away from the developer's ~/.prefect, ./mlflow.db and any live run."""
    home = tmp_path_factory.mktemp("prefect-home")
    saved = dict(os.environ)
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
    for name in (*MLFLOW_PROCESS_SETTINGS, "PREFECT_API_URL"):
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module", autouse=True)
def mlflow_settings_end_with_the_module() -> Iterator[None]:
    """A module's MLflow store stays its own: the next module on this worker starts with none
    set (a module that pointed MLflow at its store and never reset it made later modules'
    commands read that store, and fail on versions and runs that were not theirs)."""
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
    for name in MLFLOW_PROCESS_SETTINGS:
        os.environ.pop(name, None)


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

    def build(root: Path) -> None:
        raw = root / "data" / "raw"
        write_raw_dataset(synthetic_dataset(), raw, source="synthetic")
        run_preprocess(
            tiny_params.preprocess.model_copy(update={"val_fraction": 0.25, "test_fraction": 0.25}),
            raw,
            root / "data" / "processed",
            make_places(root),
        )

    return built_once(tmp_path_factory, "processed-template", build)


@pytest.fixture
def processed_dir(raw_dir: Path, tmp_path: Path, places, processed_template: Path) -> Path:
    """``data/processed`` made from the tiny raw data (``raw_dir``) by the real preprocess
    stage, with what that stage wrote beside it (``places``: the split validation's report,
    Data Docs, GX's results): a copy of the session's ``processed_template``."""
    for folder in ("gx", "reports", "data/processed"):
        shutil.copytree(processed_template / folder, tmp_path / folder, dirs_exist_ok=True)
    return tmp_path / "data" / "processed"


# The module that runs longest (the soak: a few minutes of real time) starts first, so that no
# worker is left running it alone at the end of the session.
LONGEST_FIRST = ("tests/integration/test_soak.py",)


@pytest.hookimpl(trylast=True)  # after -m has deselected: order only what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    no_gpu = not torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if no_gpu and "gpu" in item.keywords:
            item.add_marker(skip)
    # `make test` runs pytest-xdist with --dist loadfile: a module's tests stay on one worker,
    # so its module fixtures (a pipeline run, a server) are made once. The session's first
    # `mlcycle run` (first_run) takes one core for about two minutes: a module that needs it
    # goes first, so one worker starts it at once, and the other worker runs what does not
    # need it (slow modules before quick ones) meanwhile; the rest of its users come last.
    slow_modules = {item.path for item in items if "slow" in item.keywords}
    needs_first_run = {item.path for item in items if "first_run" in item.fixturenames}
    first_run_maker = next((item.path for item in items if item.path in needs_first_run), None)
    items.sort(
        key=lambda item: (
            item.nodeid.split("::")[0] not in LONGEST_FIRST,
            item.path != first_run_maker,
            item.path in needs_first_run,
            item.path not in slow_modules,
        )
    )


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """A folder ``build`` fills once per test session, whatever the number of pytest-xdist
    workers: the first worker to ask builds it under a file lock, the others wait and read it.
    For session fixtures that are costly (a pipeline run) and only ever copied, never changed."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # popen-gw0/, popen-gw1/ ... share the parent
        shared = shared.parent
    root = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        if not (root / BUILT).is_file():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed half-way
            root.mkdir()
            build(root)
            (root / BUILT).touch()
    return root


BUILT = ".built"  # what built_once leaves in a folder once it is complete


@pytest.fixture(scope="session")
def project_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repository's files (as git would ship them) in a fresh git repo, shrunk params."""

    def build(folder: Path) -> None:
        root = copy_shipped_files(folder / "project")
        params_file = root / "params.yaml"
        # its own serving port: a deploy step must never talk to an app the developer runs
        overrides = [*TINY_OVERRIDES, f"serve.port={free_port()}"]
        apply_params(load_params(params_file, overrides=overrides), params_file)
        run(["git", "init", "-q"], cwd=root)
        run(["git", "add", "-A"], cwd=root)
        run(["git", "commit", "-qm", "project under test"], cwd=root)

    return built_once(tmp_path_factory, "template", build) / "project"


@pytest.fixture(scope="session")
def first_run(project_template: Path, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """A clone that ran `mlcycle run` once (champion v1, the temporary Prefect API, its own
    SQLite MLflow store) and committed the dvc.lock it wrote: the one full pipeline run of the
    session (all workers share it) that the tests needing a trained project copy
    (``copy_project``) instead of running their own."""

    def build(folder: Path) -> None:
        root = copy_project(project_template, folder)
        # a deadline, not a speed check: on a busy 2-core machine this run has taken over 5 min
        result = run([str(Path(sys.executable).parent / "mlcycle"), "run"], cwd=root, timeout=900)
        run(["git", "add", "dvc.lock"], cwd=root)
        run(["git", "commit", "-qm", "the pipeline's first run"], cwd=root)
        (folder / "output.txt").write_text(result.stdout + result.stderr)

    folder = built_once(tmp_path_factory, "ran", build)
    return FirstRun(folder / "project", (folder / "output.txt").read_text())


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

    def build(folder: Path) -> None:
        result = build_site(folder / "site")
        assert result.returncode == 0, result.stderr[-4000:]

    return built_once(tmp_path_factory, "site", build) / "site"
