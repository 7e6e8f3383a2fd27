"""Every family through the one train stage: it trains, its file loads, MLflow's pyfunc flavour
gives the same logits; layer-wise pretraining is logged and resumes bit for bit; recurrent nets
have their gradients clipped."""

from __future__ import annotations

import hashlib

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from models import MODEL_NAMES
from tasks.core.config import TrainParams
from tasks.core.files import read_json, read_split
from tasks.core.model_file import load_model, predict_logits
from tasks.core.tracking import tracked_run
from tasks.stages import train as train_stage
from tasks.stages.train import epoch_logger, record_training, run_train
from tasks.training.choice import ModelChoice
from tests.model.test_models import OPTIONS

SAE = {**OPTIONS["sae"], "hidden_sizes": (16, 8), "pretrain_epochs": 2}


def family_params(tiny_params, family: str, options=None, **changes) -> TrainParams:
    base = tiny_params.train.model_copy(update=changes)
    choice = ModelChoice(family, dict(options or OPTIONS[family]))
    return choice.apply(base, origin="test")


def run(params: TrainParams, processed_dir, out, tracker=None):
    """The train stage as its main runs it: live epochs to ``tracker``, then the record."""
    result = run_train(
        params,
        processed_dir=processed_dir,
        model_path=out / "model.pt",
        checkpoint_dir=out / "checkpoints",
        reports_dir=out / "reports",
        on_epoch=epoch_logger(tracker) if tracker else None,
    )
    if tracker:
        record_training(tracker, out / "model.pt", processed_dir)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("family", MODEL_NAMES)
def test_every_family_trains_and_serves_the_same_logits_through_pyfunc(
    family, tracking_store, tiny_params, processed_dir, tmp_path
):
    params = family_params(tiny_params, family, epochs=2)
    with tracked_run(tiny_params) as tracker:
        result = run(params, processed_dir, tmp_path, tracker)
    assert result.epochs_run == 2
    model, saved = load_model(tmp_path / "model.pt")
    assert saved.spec.model == family
    test, _ = read_split(processed_dir, "test")
    local = predict_logits(model, torch.from_numpy(test.images)).numpy()
    run_info = MlflowClient().get_run(tracker.run_id).info
    logged = mlflow.search_logged_models(
        experiment_ids=[run_info.experiment_id], output_format="list"
    )
    pyfunc = mlflow.pyfunc.load_model(logged[0].model_uri)
    assert np.allclose(pyfunc.predict(test.images), local, atol=1e-5)


def test_pretraining_is_its_own_phase_logged_per_layer(
    tracking_store, tiny_params, processed_dir, tmp_path
):
    params = family_params(tiny_params, "sae", SAE, epochs=2)
    with tracked_run(tiny_params) as tracker:
        run(params, processed_dir, tmp_path, tracker)
    client = MlflowClient()
    for layer in (1, 2):
        for name in (f"pretrain_layer{layer}_loss", f"pretrain_layer{layer}_val_loss"):
            assert [m.step for m in client.get_metric_history(tracker.run_id, name)] == [1, 2]
    summary = read_json(tmp_path / "reports" / "train.json")
    assert {"pretrain_layer1_val_loss", "pretrain_layer2_val_loss"} <= set(summary)
    # fine-tuning's own curve starts at epoch 1 after pretraining
    assert [m.step for m in client.get_metric_history(tracker.run_id, "val_loss")] == [1, 2]


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_a_run_stopped_mid_pretraining_resumes_bit_for_bit(
    tiny_params, processed_dir, tmp_path, monkeypatch
):
    params = family_params(tiny_params, "sae", SAE, epochs=2, early_stopping_patience=None)
    run(params, processed_dir, tmp_path / "straight")

    saves = []
    real_save = train_stage.save_checkpoint

    def save_then_stop_after_three(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 3:  # layer 2, epoch 1 of 2: in the middle of pretraining
            raise KeyboardInterrupt

    monkeypatch.setattr(train_stage, "save_checkpoint", save_then_stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        run(params, processed_dir, tmp_path / "stopped")
    monkeypatch.undo()
    checkpoint = torch.load(
        tmp_path / "stopped" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True
    )
    assert checkpoint["state"]["pretrain_epoch"] == 3 and checkpoint["state"]["epoch"] == 0
    assert checkpoint["state"]["pretrain_optimizer_state"]  # layer 2's Adam, half-way

    resumed = run(params.model_copy(update={"resume": True}), processed_dir, tmp_path / "stopped")
    assert resumed.epochs_run == 2
    assert md5(tmp_path / "stopped" / "model.pt") == md5(tmp_path / "straight" / "model.pt")


def test_recurrent_nets_have_their_gradients_clipped(
    tiny_params, processed_dir, tmp_path, monkeypatch
):
    clipped: list[float] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        clipped.append(max_norm)
        return real_clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    options = {**OPTIONS["gru"], "grad_clip": 0.25}
    run(family_params(tiny_params, "gru", options, epochs=1), processed_dir, tmp_path / "gru")
    assert clipped and set(clipped) == {0.25}
    clipped.clear()
    run(family_params(tiny_params, "mlp", epochs=1), processed_dir, tmp_path / "mlp")
    assert clipped == []  # no clip asked for, none done
