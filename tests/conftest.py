"""Shared fixtures: an isolated environment, a shrunk params set and tiny generated data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import tasks  # noqa: F401  (telemetry switches)
from tasks.artifacts import ImageDataset, write_raw_dataset
from tasks.config import Params, load_params

REPO_ROOT = Path(__file__).resolve().parent.parent

# Small enough to train in a second on CPU, big enough to be a real CNN.
TINY_OVERRIDES = (
    "train.epochs=2",
    "train.batch_size=32",
    "train.cnn.channels=[8, 16]",
    "train.cnn.hidden_size=32",
    "train.mlp.hidden_sizes=[32]",
    "train.device=cpu",
    "evaluate.baseline_max_iter=200",
    "validate.min_rows=10",
    "registry.min_score=0.2",  # a 2-epoch model is weak; the gate's floor has its own tests
)


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


def free_port() -> int:
    """A loopback port nobody listens on (for servers we start, or to test refusals)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def synthetic_dataset(
    per_class: int = 12,
    num_classes: int = 3,
    shape: tuple[int, int, int] = (8, 8, 1),
    seed: int = 0,
) -> ImageDataset:
    """Learnable images: each class lights up its own band of rows, plus noise."""
    rng = np.random.default_rng(seed)
    height = shape[0]
    labels = np.repeat(np.arange(num_classes), per_class)
    images = rng.integers(0, 60, size=(len(labels), *shape), dtype=np.int64)
    band = max(1, height // num_classes)
    for index, label in enumerate(labels):
        images[index, label * band : (label + 1) * band] += 180
    order = rng.permutation(len(labels))
    return ImageDataset(
        np.clip(images, 0, 255).astype(np.uint8)[order],
        labels.astype(np.int64)[order],
        tuple(f"class_{k}" for k in range(num_classes)),
    )


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """A tiny canonical ``data/raw`` folder."""
    path = tmp_path / "data" / "raw"
    write_raw_dataset(synthetic_dataset(), path, source="synthetic")
    return path


def make_places(root: Path):
    """A copy of the repository's GX project under ``root``; validation writes beside it."""
    import shutil

    from tasks.validate import ValidationPlaces

    shutil.copytree(REPO_ROOT / "gx", root / "gx", ignore=shutil.ignore_patterns("uncommitted"))
    return ValidationPlaces(root / "gx", root / "reports", root / "quarantine")


@pytest.fixture
def places(tmp_path: Path):
    return make_places(tmp_path)


@pytest.fixture
def processed_dir(raw_dir: Path, tmp_path: Path, tiny_params: Params, places) -> Path:
    """``data/processed`` made from the tiny raw data by the real preprocess stage."""
    from tasks.preprocess import run_preprocess

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
