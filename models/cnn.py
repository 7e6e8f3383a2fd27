from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class CNN(nn.Sequential):
    """Conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool while the map is at least 2x2),
    then a fully connected head. Works for any input size, 8x8 digits to 32x32 CIFAR."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        channels: Sequence[int],
        hidden_size: int,
        dropout: float,
    ) -> None:
        height, width, channels_in = input_shape
        layers: list[nn.Module] = []
        for channels_out in channels:
            layers += [
                nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1),
                nn.BatchNorm2d(channels_out),
                nn.ReLU(),
            ]
            if height >= 2 and width >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels_in = channels_out
        layers += [
            nn.Flatten(),
            nn.Linear(channels_in * height * width, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        ]
        super().__init__(*layers)
