import pytest
import torch

from models import MODEL_NAMES, MODELS, PixelNormalize, build_classifier

OPTIONS = {
    "mlp": {"hidden_sizes": (16, 8), "dropout": 0.1},
    "cnn": {"channels": (4, 8), "hidden_size": 16, "dropout": 0.1},
}


def test_every_registered_model_has_test_options():
    assert set(OPTIONS) == set(MODELS) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (3, 5, 1), (1, 1, 1)])
def test_models_take_raw_pixels_of_any_size(name, shape):
    model = build_classifier(name, shape, 7, [0.5] * shape[2], [0.25] * shape[2], **OPTIONS[name])
    pixels = torch.randint(0, 256, (4, *shape), dtype=torch.uint8)
    logits = model(pixels)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown model 'resnet'; expected one of mlp, cnn"):
        build_classifier("resnet", (8, 8, 1), 2, [0.0], [1.0])


def test_pixel_normalize_scales_standardises_and_moves_channels_first():
    layer = PixelNormalize(mean=[0.5, 0.0], std=[0.5, 1.0])
    pixels = torch.tensor([[[[255, 51]]]], dtype=torch.uint8)  # (N=1, H=1, W=1, C=2)
    out = layer(pixels)
    assert out.shape == (1, 2, 1, 1)
    assert out.flatten().tolist() == pytest.approx([1.0, 0.2])


def test_pixel_normalize_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="mean has 1 channels but std has 3"):
        PixelNormalize([0.0], [1.0, 1.0, 1.0])


def test_normalisation_statistics_travel_in_the_state_dict():
    model = build_classifier("mlp", (8, 8, 1), 3, [0.3], [0.4], **OPTIONS["mlp"])
    state = model.state_dict()
    assert state["0.mean"].flatten().tolist() == pytest.approx([0.3])
    assert state["0.std"].flatten().tolist() == pytest.approx([0.4])
