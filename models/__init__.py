"""Torch ``nn.Module`` definitions and a name -> builder registry. Imports nothing of ours.

Every family is an image classifier: ``build_classifier`` wraps its network in a
:class:`Classifier` that takes raw pixels. A network may also offer, and the train stage then
uses:

- ``training_loss(x, labels, criterion) -> (loss, logits)``: its own objective (an
  autoencoder adds the reconstruction and sparsity terms to the classification loss);
- ``grad_clip: float | None``: clip the gradient norm to this (recurrent nets);
- ``pretrain_layers``, ``pretrain_epochs``, ``pretrain_lr``, ``pretrain_parameters(layer)`` and
  ``pretrain_loss(x, layer)``: greedy layer-wise pretraining before fine-tuning (``sae``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from models.autoencoder import ConvAutoencoder
from models.cnn import CNN
from models.layers import PixelNormalize
from models.mlp import MLP
from models.recurrent import RecurrentNet
from models.resnet import ResNet
from models.sae import StackedAutoencoder
from models.vit import VisionTransformer

# name -> builder(input_shape=(H, W, C), num_classes, **options) -> nn.Module producing logits
# from standardised images (N, C, H, W)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet": ResNet,
    "lstm": partial(RecurrentNet, cell="lstm"),
    "gru": partial(RecurrentNet, cell="gru"),
    "vit": VisionTransformer,
    "autoencoder": ConvAutoencoder,
    "sae": StackedAutoencoder,
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


class Classifier(nn.Sequential):
    """Raw pixels (N, H, W, C) in 0..255 -> class logits: ``PixelNormalize`` then the network.

    A Sequential, so the state-dict keys (``0.mean``, ``1.<layer>``) stay those of the model
    files and registered versions written before this class existed.
    """

    def __init__(self, normalize: PixelNormalize, network: nn.Module) -> None:
        super().__init__(normalize, network)

    @property
    def network(self) -> nn.Module:
        return self[1]

    def training_loss(
        self, pixels: torch.Tensor, labels: torch.Tensor, criterion: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimise on a batch, and the batch's logits."""
        x = self[0](pixels)
        if hasattr(self.network, "training_loss"):
            return self.network.training_loss(x, labels, criterion)
        logits = self.network(x)
        return criterion(logits, labels), logits

    @property
    def grad_clip(self) -> float | None:
        return getattr(self.network, "grad_clip", None)

    @property
    def pretrain_layers(self) -> int:
        """Layers pretrained greedily before fine-tuning; 0 for most families."""
        return getattr(self.network, "pretrain_layers", 0)

    def pretrain_parameters(self, layer: int) -> Iterator[nn.Parameter]:
        return self.network.pretrain_parameters(layer)

    def pretrain_loss(self, pixels: torch.Tensor, layer: int) -> torch.Tensor:
        return self.network.pretrain_loss(self[0](pixels), layer)


def build_classifier(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **options: Any,
) -> Classifier:
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
    return Classifier(PixelNormalize(mean, std), network)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "Classifier",
    "PixelNormalize",
    "build_classifier",
    "parameter_count",
]
