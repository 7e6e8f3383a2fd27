"""Torch ``nn.Module`` definitions and a name -> builder registry. Imports nothing of ours."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from models.cnn import CNN
from models.layers import PixelNormalize
from models.mlp import MLP

# name -> builder(input_shape=(H, W, C), num_classes, **options) -> nn.Module producing logits
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def build_classifier(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **options: Any,
) -> nn.Sequential:
    """A network that takes raw pixels (N, H, W, C) in 0..255 and returns class logits.

    The normalisation statistics live inside the model as buffers, so whoever loads it (the
    evaluation stage, MLflow, a server) feeds pixels exactly as the dataset stores them.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    height, width, channels = input_shape
    network = MODELS[name](
        input_shape=(height, width, channels), num_classes=num_classes, **options
    )
    return nn.Sequential(PixelNormalize(mean, std), network)


def classifier_from_bundle(bundle: Mapping[str, Any]) -> nn.Sequential:
    """The trained network a model file holds (``artifacts/model.pt``, loaded with
    ``torch.load(..., weights_only=True)``), in eval mode: its spec (model name, options, input
    shape, classes, statistics) rebuilds it, and its state dict fills it."""
    network = build_classifier(
        bundle["model"],
        bundle["input_shape"],
        len(bundle["class_names"]),
        bundle["mean"],
        bundle["std"],
        **bundle["options"],
    )
    network.load_state_dict(bundle["state_dict"])
    return network.eval()


__all__ = ["MODELS", "MODEL_NAMES", "PixelNormalize", "build_classifier", "classifier_from_bundle"]
