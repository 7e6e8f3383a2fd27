import hashlib
import itertools

import numpy as np
import pytest
import torch

from tasks.core.config import TrainParams
from tasks.core.errors import MlcycleError
from tasks.core.model_file import load_model
from tasks.stages.train import run_train
from tasks.training.checkpoint import CheckpointError, TrainingState
from tasks.training.device import resolve_device
from tasks.training.loop import TrainingDiverged, advance
from tasks.training.placement import batches


def train_params(tiny_params, **changes) -> TrainParams:
    return tiny_params.train.model_copy(update=changes)


def train(tiny_params, processed_dir, out, **changes):
    return run_train(
        train_params(tiny_params, **changes),
        processed_dir=processed_dir,
        model_path=out / "model.pt",
        checkpoint_dir=out / "checkpoints",
        reports_dir=out / "reports",
    )


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_training_writes_model_checkpoint_and_history(tiny_params, processed_dir, tmp_path):
    result = train(
        tiny_params, processed_dir, tmp_path / "out", epochs=3, early_stopping_patience=None
    )
    out = tmp_path / "out"
    assert result.epochs_run == 3 and result.device == "cpu"
    history = (out / "reports" / "training_history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,train_accuracy,val_loss,val_accuracy"
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]
    model, saved = load_model(out / "model.pt")
    assert saved.spec.model == "cnn"
    assert saved.spec.class_names == ("class_0", "class_1", "class_2")
    assert (saved.best_epoch, saved.epochs_run) == (result.best_epoch, 3)
    logits = model(torch.zeros(4, 8, 8, 1, dtype=torch.uint8))
    assert logits.shape == (4, 3)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_each_model_learns_the_synthetic_task(tiny_params, processed_dir, tmp_path, model):
    result = train(tiny_params, processed_dir, tmp_path, model=model, epochs=8, lr=0.01)
    assert result.best_val_accuracy >= 0.9  # three well-separated classes


def test_training_is_deterministic(tiny_params, processed_dir, tmp_path):
    train(tiny_params, processed_dir, tmp_path / "a")
    train(tiny_params, processed_dir, tmp_path / "b")
    assert md5(tmp_path / "a" / "model.pt") == md5(tmp_path / "b" / "model.pt")


def test_resume_continues_where_it_stopped(tiny_params, processed_dir, tmp_path):
    settings = dict(early_stopping_patience=None)
    straight = train(tiny_params, processed_dir, tmp_path / "straight", epochs=4, **settings)
    train(tiny_params, processed_dir, tmp_path / "resumed", epochs=2, **settings)
    resumed = train(
        tiny_params, processed_dir, tmp_path / "resumed", epochs=4, resume=True, **settings
    )
    assert resumed.epochs_run == straight.epochs_run == 4
    history = (tmp_path / "resumed" / "reports" / "training_history.csv").read_text()
    assert [line.split(",")[0] for line in history.splitlines()[1:]] == ["1", "2", "3", "4"]
    # Same RNG streams, same optimiser state: bit-identical to never having stopped.
    assert md5(tmp_path / "resumed" / "model.pt") == md5(tmp_path / "straight" / "model.pt")


def test_resume_without_a_checkpoint_starts_from_scratch(tiny_params, processed_dir, tmp_path):
    assert train(tiny_params, processed_dir, tmp_path, resume=True).epochs_run == 2


def test_resume_refuses_a_checkpoint_of_another_model(tiny_params, processed_dir, tmp_path):
    train(tiny_params, processed_dir, tmp_path, model="cnn")
    with pytest.raises(CheckpointError, match=r"last\.pt: was written for another model"):
        train(tiny_params, processed_dir, tmp_path, model="mlp", resume=True)


def test_unreadable_checkpoint_is_named(tiny_params, processed_dir, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=r"last\.pt: cannot be read"):
        train(tiny_params, processed_dir, tmp_path, resume=True)


def test_early_stopping_keeps_the_best_epoch():
    model = torch.nn.Linear(2, 2)
    state = TrainingState()
    for epoch, val_loss in enumerate([1.0, 0.8, 0.9, 0.85], start=1):
        advance(
            state, {"epoch": epoch, "val_loss": val_loss, "val_accuracy": 0.5}, model, patience=2
        )
    assert state.stopped_early and state.best_epoch == 2 and state.best_val_loss == 0.8


def test_patience_none_never_stops():
    state = TrainingState()
    for epoch in range(1, 6):
        advance(
            state,
            {"epoch": epoch, "val_loss": float(epoch), "val_accuracy": 0.0},
            torch.nn.Linear(1, 1),
            patience=None,
        )
    assert not state.stopped_early and state.best_epoch == 1


def test_a_trailing_batch_of_one_joins_the_previous_batch():
    assert batches(65, 32) == [slice(0, 32), slice(32, 65)]
    assert batches(64, 32) == [slice(0, 32), slice(32, 64)]
    assert batches(1, 32) == [slice(0, 1)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_auto_device_falls_back_to_cpu():
    assert resolve_device("auto").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_asking_for_cuda_without_one_is_an_error():
    with pytest.raises(MlcycleError, match=r"'cuda' but 0 CUDA device\(s\) are available"):
        resolve_device("cuda")


def test_asking_for_a_cuda_index_beyond_the_devices_is_an_error():
    with pytest.raises(MlcycleError, match=r"'cuda:99' but \d+ CUDA device\(s\)"):
        resolve_device("cuda:99")


def test_resume_uses_the_current_learning_rate(tiny_params, processed_dir, tmp_path):
    train(tiny_params, processed_dir, tmp_path, epochs=1, lr=0.01, weight_decay=0.0)
    train(tiny_params, processed_dir, tmp_path, epochs=2, lr=0.0005, weight_decay=0.01, resume=True)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    group = checkpoint["optimizer_state"]["param_groups"][0]
    assert checkpoint["state"]["epoch"] == 2
    assert group["lr"] == 0.0005 and group["weight_decay"] == 0.01


def test_resume_refuses_a_checkpoint_of_another_optimiser_or_data(
    tiny_params, processed_dir, tmp_path
):
    train(tiny_params, processed_dir, tmp_path, optimizer="adam")
    with pytest.raises(CheckpointError, match="another model, optimiser or training data"):
        train(tiny_params, processed_dir, tmp_path, optimizer="sgd", resume=True)
    with np.load(processed_dir / "train.npz") as arrays:
        changed = {name: arrays[name] for name in arrays.files}
    changed["images"] = 255 - changed["images"]
    np.savez(processed_dir / "train.npz", **changed)
    with pytest.raises(CheckpointError, match="another model, optimiser or training data"):
        train(tiny_params, processed_dir, tmp_path, optimizer="adam", resume=True)


def test_divergence_is_a_clear_error(tiny_params, processed_dir, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 1 .*lower train\.lr"):
        train(tiny_params, processed_dir, tmp_path, optimizer="sgd", lr=1e12, momentum=0.9)
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.gpu
def test_training_on_cuda_matches_cpu_quality(tiny_params, processed_dir, tmp_path):
    cpu = train(tiny_params, processed_dir, tmp_path / "cpu", epochs=8, lr=0.01, device="cpu")
    gpu = train(tiny_params, processed_dir, tmp_path / "gpu", epochs=8, lr=0.01, device="cuda")
    assert gpu.device.startswith("cuda")
    assert abs(gpu.best_val_accuracy - cpu.best_val_accuracy) <= 0.1
    model, _ = load_model(tmp_path / "gpu" / "model.pt")  # loads on CPU
    assert np.isfinite(model(torch.zeros(1, 8, 8, 1)).detach().numpy()).all()


def test_random_shift_moves_each_image_within_the_bound_and_fills_with_zeros():
    from tasks.training.augment import draw_augmentation

    def random_shift(images, max_shift, generator):
        return draw_augmentation(len(images), max_shift, False, generator).apply(images)

    images = torch.zeros(64, 5, 5, 2, dtype=torch.uint8)
    images[:, 2, 2] = 255  # one lit pixel in the centre, both channels
    shifted = random_shift(images, 1, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    for image in shifted:
        lit = image[..., 0].nonzero().tolist()
        assert len(lit) == 1 and all(abs(axis - 2) <= 1 for axis in lit[0])
        assert torch.equal(image[..., 0], image[..., 1])  # channels move together
    offsets = {tuple(image[..., 0].nonzero()[0].tolist()) for image in shifted}
    assert len(offsets) > 4  # each image its own offset, not one for the batch
    again = random_shift(images, 1, torch.Generator().manual_seed(0))
    assert torch.equal(shifted, again)
    assert random_shift(images, 0, torch.Generator()) is images


def test_augmented_training_is_still_deterministic(tiny_params, processed_dir, tmp_path):
    train(tiny_params, processed_dir, tmp_path / "a", augment_shift=1)
    train(tiny_params, processed_dir, tmp_path / "b", augment_shift=1)
    train(tiny_params, processed_dir, tmp_path / "c")
    assert md5(tmp_path / "a" / "model.pt") == md5(tmp_path / "b" / "model.pt")
    assert md5(tmp_path / "a" / "model.pt") != md5(tmp_path / "c" / "model.pt")


def test_the_cosine_schedule_decays_from_lr_to_zero(tiny_params):
    from tasks.training.schedule import epoch_learning_rate

    params = train_params(tiny_params, lr=0.01, epochs=10, lr_schedule="cosine")
    rates = [epoch_learning_rate(params, epoch) for epoch in range(1, 11)]
    assert rates[0] == pytest.approx(0.01) and rates[5] == pytest.approx(0.005)
    assert all(a > b for a, b in itertools.pairwise(rates)) and rates[-1] > 0
    constant = train_params(tiny_params, lr=0.01, lr_schedule="constant")
    assert {epoch_learning_rate(constant, epoch) for epoch in range(1, 5)} == {0.01}


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])  # per epoch; per step
def test_a_run_stopped_and_resumed_keeps_the_schedule_and_smoothing(
    tiny_params, processed_dir, tmp_path, monkeypatch, schedule
):
    from tasks.stages import train as train_stage

    settings = dict(
        epochs=4, early_stopping_patience=None, lr_schedule=schedule, label_smoothing=0.1
    )
    train(tiny_params, processed_dir, tmp_path / "straight", **settings)
    saves = []
    real_save = train_stage.save_checkpoint

    def stop_after_two(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_stage, "save_checkpoint", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_params, processed_dir, tmp_path / "resumed", **settings)
    monkeypatch.undo()
    train(tiny_params, processed_dir, tmp_path / "resumed", resume=True, **settings)
    # epochs 3 and 4 got the rates of epochs 3 and 4 of the schedule: bit-identical
    assert md5(tmp_path / "resumed" / "model.pt") == md5(tmp_path / "straight" / "model.pt")
