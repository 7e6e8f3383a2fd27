"""The train stage's CUDA fast path: bf16 autocast, channels_last, fused optimisers, cuDNN
autotuning, torch.compile, and batches streamed from pinned host memory.

Like test_zoo_cuda.py it imports only models/, the training engine and scikit-learn, so it runs
on a bare GPU box: `pytest -m gpu tests/model`.
"""

from __future__ import annotations

import hashlib
import time

import pytest
import torch

from models import build_classifier
from tasks.core.config import TrainParams, read_params_tree
from tasks.core.model_file import predict_logits
from tasks.training.checkpoint import TrainingState
from tasks.training.loop import fit, start_training
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.gpu


def cuda_params(**changes) -> TrainParams:
    tree = read_params_tree(REPO_ROOT / "params.yaml")["train"]
    return TrainParams.model_validate({**tree, "device": "cuda", **changes})


def fit_digits(digits, **changes):
    train_set, val_set, test_set = digits
    params = cuda_params(**changes)
    spec = {
        "model": params.model,
        "options": params.model_options(),
        "input_shape": [8, 8, 1],
        "class_names": list(train_set.class_names),
        "mean": [float(train_set.images.mean() / 255)],
        "std": [float(train_set.images.std() / 255)],
    }
    model, optimizer, _ = start_training(spec, params)
    started = time.perf_counter()
    state = fit(model, optimizer, params, train_set, val_set, TrainingState(), lambda s, r: None)
    seconds = time.perf_counter() - started
    model.load_state_dict(state.best_state)
    logits = predict_logits(model, torch.from_numpy(test_set.images)).float().cpu()
    accuracy = float((logits.argmax(1).numpy() == test_set.labels).mean())
    return model, optimizer, state, accuracy, seconds


def weights_digest(state: TrainingState) -> str:
    digest = hashlib.sha256()
    for key in sorted(state.best_state):
        digest.update(state.best_state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_the_fast_path_is_on_and_keeps_the_accuracy(digits):
    model, optimizer, _, accuracy, seconds = fit_digits(
        digits,
        model="cnn",
        precision="auto",
        deterministic=False,
        batch_size=256,
        lr=0.003,
        lr_schedule="onecycle",
        epochs=30,
    )
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert optimizer.defaults.get("fused") is True
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    print(f"cnn bf16 channels_last fused onecycle: test accuracy {accuracy:.4f} in {seconds:.1f}s")
    assert accuracy >= 0.95


def test_streaming_from_pinned_memory_trains_the_same_model_as_resident_data(digits):
    common = dict(model="cnn", epochs=4, augment_shift=1, deterministic=True)
    resident = fit_digits(digits, data_placement="device", **common)[2]
    streamed = fit_digits(digits, data_placement="host", **common)[2]
    assert weights_digest(resident) == weights_digest(streamed)


def test_a_compiled_step_trains_on_cuda(digits):
    _, _, _, accuracy, seconds = fit_digits(digits, model="cnn", compile=True, epochs=10)
    print(f"compiled cnn: test accuracy {accuracy:.4f} in {seconds:.1f}s (compilation included)")
    assert accuracy >= 0.95


def test_bf16_autocast_is_used_for_the_training_forward_pass(digits):
    params = cuda_params(model="mlp")
    model = build_classifier("mlp", (8, 8, 1), 10, [0.3], [0.4], **params.model_options()).cuda()
    seen = []
    model.network.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    fit(
        model,
        torch.optim.Adam(model.parameters()),
        params.model_copy(update={"epochs": 1}),
        digits[0],
        digits[1],
        TrainingState(),
        lambda s, r: None,
    )
    assert torch.bfloat16 in seen  # training batches
    assert torch.float32 in seen  # validation stays fp32
