"""The zoo on CUDA, through the train stage's loop: every family learns the digits there, and
a trained network gives the same logits on the GPU as on the CPU.

Imports only models/, the training engine and scikit-learn (no tracking, no Prefect), so it
also runs on a bare GPU box: `pytest -m gpu tests/model/test_zoo_cuda.py`.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from models import MODEL_NAMES, build_classifier
from tasks.core.config import TrainParams, read_params_tree
from tasks.core.files import ImageDataset
from tasks.training.checkpoint import TrainingState
from tasks.training.choice import ModelChoice
from tasks.training.device import make_deterministic
from tasks.training.loop import fit, make_optimizer
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def digits() -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """The pipeline's default data, 70/15/15, pixels 0..16 -> 0..255 as collect stores them."""
    data = load_digits()
    images = (data.images * (255 / 16)).round().astype(np.uint8)[..., None]
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, data.target, test_size=0.15, stratify=data.target, random_state=42
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=0.15 / 0.85, stratify=rest_y, random_state=42
    )
    names = tuple(str(c) for c in range(10))
    return tuple(  # type: ignore[return-value]
        ImageDataset(x, y.astype(np.int64), names)
        for x, y in ((train_x, train_y), (val_x, val_y), (test_x, test_y))
    )


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
