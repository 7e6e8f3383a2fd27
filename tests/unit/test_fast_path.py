"""The train stage's fast path on the CPU: where the data lives, the one-cycle schedule, bf16,
compilation, flips and threads. The CUDA half (pinned streaming, bf16 autocast, channels_last,
fused optimisers, cuDNN autotuning) is tests/model/test_fast_path_cuda.py."""

import itertools

import pytest
import torch

from tasks.training.augment import draw_augmentation
from tasks.training.device import autocast_dtype, cpu_threads
from tasks.training.schedule import ONECYCLE_WARMUP, epoch_learning_rate
from tests.unit.test_train import md5, train


def test_streaming_batches_from_host_memory_trains_the_same_model(
    tiny_params, processed_dir, tmp_path
):
    augmented = dict(augment_shift=1, augment_flip=True, epochs=3)
    train(tiny_params, processed_dir, tmp_path / "device", data_placement="device", **augmented)
    train(tiny_params, processed_dir, tmp_path / "host", data_placement="host", **augmented)
    train(tiny_params, processed_dir, tmp_path / "plain", data_placement="host", epochs=3)
    # the augmentation is drawn per epoch and applied per batch as the batches stream in
    assert md5(tmp_path / "device" / "model.pt") == md5(tmp_path / "host" / "model.pt")
    assert md5(tmp_path / "host" / "model.pt") != md5(tmp_path / "plain" / "model.pt")


def test_onecycle_warms_up_then_anneals_step_by_step(tiny_params):
    params = tiny_params.train.model_copy(
        update={"lr": 0.1, "epochs": 10, "lr_schedule": "onecycle"}
    )
    rates = [
        epoch_learning_rate(params, epoch, step / 4) for epoch in range(1, 11) for step in range(4)
    ]
    peak = rates.index(max(rates))
    assert rates[0] == pytest.approx(0.1 / 25)
    assert max(rates) == pytest.approx(0.1) and peak == round(ONECYCLE_WARMUP * len(rates))
    assert all(a < b for a, b in itertools.pairwise(rates[: peak + 1]))
    assert all(a > b for a, b in itertools.pairwise(rates[peak:]))
    assert 0 < rates[-1] < 0.1 / 100
    assert epoch_learning_rate(params, 10, 1.0) == pytest.approx(0.1 / 25 / 1e4)  # the end
    # a position, not a counter: asked again, out of order (as a resumed run asks), the rate
    # half-way through epoch 7 is the one the run met, and the known value: 65% of the way,
    # half-way down the cosine from lr to lr/25/1e4
    assert epoch_learning_rate(params, 7, 0.5) == rates[6 * 4 + 2]
    assert rates[6 * 4 + 2] == pytest.approx((0.1 + 0.1 / 25 / 1e4) / 2, rel=1e-12)


def test_precision_auto_is_fp32_on_cpu_and_bf16_can_be_asked_for(
    tiny_params, processed_dir, tmp_path
):
    cpu = torch.device("cpu")
    assert autocast_dtype(tiny_params.train, cpu) is None
    bf16 = tiny_params.train.model_copy(update={"precision": "bf16"})
    assert autocast_dtype(bf16, cpu) is torch.bfloat16
    assert autocast_dtype(bf16.model_copy(update={"precision": "fp32"}), cpu) is None
    fp32 = train(tiny_params, processed_dir, tmp_path / "fp32", epochs=6, lr=0.01)
    half = train(tiny_params, processed_dir, tmp_path / "bf16", epochs=6, lr=0.01, precision="bf16")
    assert (
        half.best_val_accuracy >= 0.9
        and abs(half.best_val_accuracy - fp32.best_val_accuracy) <= 0.1
    )
    assert md5(tmp_path / "fp32" / "model.pt") != md5(tmp_path / "bf16" / "model.pt")


def test_deterministic_false_still_trains_on_cpu(tiny_params, processed_dir, tmp_path):
    result = train(tiny_params, processed_dir, tmp_path, epochs=6, lr=0.01, deterministic=False)
    assert result.best_val_accuracy >= 0.9


@pytest.mark.slow
def test_a_compiled_training_step_learns_like_the_eager_one(tiny_params, processed_dir, tmp_path):
    eager = train(tiny_params, processed_dir, tmp_path / "eager", model="mlp", epochs=4, lr=0.01)
    compiled = train(
        tiny_params,
        processed_dir,
        tmp_path / "compiled",
        model="mlp",
        epochs=4,
        lr=0.01,
        compile=True,
    )
    assert compiled.best_val_accuracy >= 0.9
    assert abs(compiled.best_val_loss - eager.best_val_loss) < 0.05
    # the saved model is the plain module (no compiled wrapper's key prefixes)
    state = torch.load(tmp_path / "compiled" / "model.pt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)


def test_flips_mirror_about_half_the_images_left_right():
    images = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(1, 3, 4, 2).repeat(200, 1, 1, 1)
    plan = draw_augmentation(200, 0, True, torch.Generator().manual_seed(0))
    flipped = plan.apply(images)
    mirrored = torch.tensor(
        [torch.equal(a, b.flip(1)) for a, b in zip(flipped, images, strict=True)]
    )
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(flipped, images, strict=True)])
    assert bool((mirrored ^ kept).all()) and 70 < int(mirrored.sum()) < 130
    # applied batch by batch, the epoch's draws give the same images as applied at once
    halves = torch.cat(
        [plan.apply(images[:77], slice(0, 77)), plan.apply(images[77:], slice(77, 200))]
    )
    assert torch.equal(halves, flipped)


def test_cpu_threads_are_the_cores_shared_among_local_processes(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = cpu_threads()
    assert alone >= 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(alone * 4))
    assert cpu_threads() == 1
