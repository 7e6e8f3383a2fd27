from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """The classic MNIST multilayer perceptron: flatten, hidden ReLU layers with dropout."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        hidden_sizes: Sequence[int],
        dropout: float,
    ) -> None:
        height, width, channels = input_shape
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = channels * height * width
        for size in hidden_sizes:
            layers += [nn.Linear(width_in, size), nn.ReLU(), nn.Dropout(dropout)]
            width_in = size
        layers.append(nn.Linear(width_in, num_classes))
        super().__init__(*layers)
