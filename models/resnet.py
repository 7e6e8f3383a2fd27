from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers around an identity shortcut (a 1x1 conv where the
    block changes the width or the resolution), as in ResNet-18/34."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small residual CNN: a 3x3 stem, one stage of basic blocks per entry of ``channels``
    (each stage after the first halves the map while it is at least 2x2), global average
    pooling, dropout and a linear head. The family to pick for CIFAR-10-class data; it works
    for any input size, 1x1 included."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        channels: Sequence[int],
        blocks_per_stage: int,
        dropout: float,
    ) -> None:
        super().__init__()
        height, width, channels_in = input_shape
        width_in = channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(channels_in, width_in, 3, padding=1, bias=False),
            nn.BatchNorm2d(width_in),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        for index, width_out in enumerate(channels):
            stride = 2 if index > 0 and height >= 2 and width >= 2 else 1
            if stride == 2:
                # a 3x3 conv with padding 1 and stride 2 gives ceil(n / 2)
                height, width = (height + 1) // 2, (width + 1) // 2
            for block in range(blocks_per_stage):
                blocks.append(BasicBlock(width_in, width_out, stride if block == 0 else 1))
                width_in = width_out
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(width_in, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Each block starts as (nearly) the identity, which lets deeper stacks train from the
        # first step (Goyal et al., 2017).
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
