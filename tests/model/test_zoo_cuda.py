"""The zoo on CUDA, through the train stage's loop: every family learns the digits there, and
a trained network gives the same logits on the GPU as on the CPU.

Imports only models/, the training engine and scikit-learn (no tracking, no Prefect), so it
also runs on a bare GPU box: `pytest -m gpu tests/model/test_zoo_cuda.py`.
"""

from __future__ import annotations

import time

import pytest
import torch

from models import MODEL_NAMES, build_classifier
from tasks.core.config import TrainParams, read_params_tree
from tasks.training.checkpoint import TrainingState
from tasks.training.choice import ModelChoice
from tasks.training.device import make_deterministic
from tasks.training.loop import fit, make_optimizer
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("family", MODEL_NAMES)
def test_every_family_learns_the_digits_on_cuda(family, digits):
    train_set, val_set, test_set = digits
    # train alone: the whole file's schedule checks need Prefect, which a bare GPU box lacks
    defaults = TrainParams.model_validate(read_params_tree(REPO_ROOT / "params.yaml")["train"])
    train = ModelChoice(family).apply(defaults, origin="test").model_copy(update={"device": "cuda"})
    device = torch.device("cuda")
    make_deterministic(train.seed, device)
    mean = [float(train_set.images.mean() / 255)]
    std = [float(train_set.images.std() / 255)]
    model = build_classifier(family, (8, 8, 1), 10, mean, std, **train.model_options())
    model = model.to(device)
    optimizer = make_optimizer(train, model)
    started = time.perf_counter()
    state = fit(model, optimizer, train, train_set, val_set, TrainingState(), lambda s, r: None)
    seconds = time.perf_counter() - started
    model.load_state_dict(state.best_state)
    model.eval()
    with torch.no_grad():
        cuda_logits = model(torch.from_numpy(test_set.images).to(device)).float().cpu()
        cpu_logits = model.cpu()(torch.from_numpy(test_set.images))
    accuracy = (cuda_logits.argmax(1).numpy() == test_set.labels).mean()
    print(
        f"{family}: test accuracy {accuracy:.4f}, {state.epoch} epochs in {seconds:.1f}s "
        f"({seconds / max(state.epoch, 1):.3f} s/epoch) on {torch.cuda.get_device_name()}"
    )
    assert accuracy >= 0.90
    # cuDNN may use TF32 for convolutions: close, not bit-equal
    assert torch.allclose(cuda_logits, cpu_logits, atol=2e-2, rtol=1e-2)
    assert (cuda_logits.argmax(1) == cpu_logits.argmax(1)).float().mean() >= 0.99
