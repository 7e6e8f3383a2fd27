"""Data-parallel training: the train stage's module under torchrun, two processes on the CPU
(gloo), against the same stage in one process, on the digits; and a resume across a changed
number of processes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from tasks.core.config import apply_params, load_params
from tasks.core.files import read_split
from tasks.core.model_file import load_model, predict_logits
from tasks.stages.train import run_train
from tests.helpers import REPO_ROOT, make_places
from tests.integration.helpers import run

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml as shipped, and the digits split by the real collect, validate and
    preprocess stages, in a folder of its own (the stage's working directory)."""
    from tasks.stages.collect import run_collect
    from tasks.stages.preprocess import run_preprocess
    from tasks.stages.validate import run_validate

    root = tmp_path_factory.mktemp("distributed")
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    params = load_params(root / "params.yaml")
    places = make_places(root)
    data = root / "data"
    run_collect(params.collect, data / "raw", data / "external")
    run_validate(params.validate, data / "raw", data / "validated", places)
    run_preprocess(params.preprocess, data / "validated", data / "processed", places)
    return root


def set_params(root: Path, *overrides: str) -> None:
    path = root / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", path)
    apply_params(load_params(path, overrides=overrides), path)


def train_stage(root: Path) -> str:
    """``python -m tasks.stages.train`` in ``root``, as DVC runs it; its output."""
    result = run(
        [sys.executable, "-m", "tasks.stages.train"],
        cwd=root,
        timeout=600,
        PYTHONPATH=str(REPO_ROOT),
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
    )
    return result.stdout + result.stderr


def test_accuracy(model_path: Path, processed: Path) -> float:
    model, _ = load_model(model_path)
    test, _ = read_split(processed, "test")
    predicted = predict_logits(model, torch.from_numpy(test.images)).argmax(dim=1).numpy()
    return float((predicted == test.labels).mean())


test_accuracy.__test__ = False  # a helper, not a test


def test_two_cpu_processes_reach_the_single_process_accuracy(workspace: Path, tmp_path: Path):
    processed = workspace / "data" / "processed"
    single = run_train(
        load_params(REPO_ROOT / "params.yaml").train,
        processed,
        tmp_path / "model.pt",
        tmp_path / "checkpoints",
        tmp_path / "reports",
    )
    set_params(workspace, "train.processes=2")
    output = train_stage(workspace)
    assert "2 data-parallel processes" in output and "torch.distributed.run" in output
    # rank 0 alone speaks, checkpoints, writes the model and logs to MLflow
    assert output.count("train: best epoch") == 1
    assert (workspace / "artifacts" / "checkpoints" / "last.pt").is_file()
    one = test_accuracy(tmp_path / "model.pt", processed)
    two = test_accuracy(workspace / "artifacts" / "model.pt", processed)
    print(f"test accuracy: 1 process {one:.4f} ({single.epochs_run} epochs), 2 processes {two:.4f}")
    assert one >= 0.97 and abs(two - one) <= 0.01
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    try:
        client = MlflowClient()
        (run_info,) = client.search_runs(client.search_experiments()[0].experiment_id)
        epochs = len(client.get_metric_history(run_info.info.run_id, "val_loss"))
    finally:
        mlflow.set_tracking_uri(None)  # it is also the environment of later tests' commands
    history = (workspace / "reports" / "training_history.csv").read_text().splitlines()
    assert epochs == len(history) - 1  # each epoch logged once, not once per process
    assert run_info.data.params["train.processes"] == "2"


def test_a_run_resumes_on_another_number_of_processes(workspace: Path):
    fixed = ("train.early_stopping_patience=null", "train.model=mlp")

    def in_one_process(*overrides: str) -> None:
        train = load_params(REPO_ROOT / "params.yaml", overrides=[*fixed, *overrides]).train
        artifacts = workspace / "artifacts"
        run_train(
            train,
            workspace / "data" / "processed",
            artifacts / "model.pt",
            artifacts / "checkpoints",
            workspace / "reports",
        )

    in_one_process("train.epochs=3")
    set_params(workspace, "train.processes=2", "train.epochs=5", "train.resume=true", *fixed)
    assert "resuming after epoch 3" in train_stage(workspace)  # 1 process -> 2
    in_one_process("train.epochs=6", "train.resume=true")  # 2 processes -> 1
    history = (workspace / "reports" / "training_history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert load_model(workspace / "artifacts" / "model.pt")[1].epochs_run == 6


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs"
)
def test_two_gpus_train_with_nccl(workspace: Path):
    set_params(workspace, "train.processes=2", "train.device=cuda")
    output = train_stage(workspace)
    assert "2 data-parallel processes" in output and "cuda:0" in output
    accuracy = test_accuracy(workspace / "artifacts" / "model.pt", workspace / "data" / "processed")
    assert accuracy >= 0.97
