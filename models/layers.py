from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PixelNormalize(nn.Module):
    """Raw pixels (N, H, W, C) in 0..255, any dtype -> standardised float (N, C, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        scaled = pixels.permute(0, 3, 1, 2).float().div(255.0)
        return (scaled - self.mean) / self.std
