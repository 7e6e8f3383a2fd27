"""Augmentation as tensor ops on the device, a whole epoch at a time (never per sample in
Python): random translations of the raw pixels, the shift a digit or an object tolerates."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image (N, H, W, C) moved by its own offset in -max_shift..max_shift along both
    axes; what moves in is zero. Offsets come from ``generator`` (seeded: reproducible)."""
    if max_shift == 0:
        return images
    count, height, width, _ = images.shape
    offsets = torch.randint(0, 2 * max_shift + 1, (2, count), generator=generator)
    rows_start, cols_start = offsets.to(images.device)
    padded = F.pad(images.permute(0, 3, 1, 2), (max_shift,) * 4).permute(0, 2, 3, 1)
    rows = rows_start[:, None] + torch.arange(height, device=images.device)  # (N, H)
    cols = cols_start[:, None] + torch.arange(width, device=images.device)  # (N, W)
    batch = torch.arange(count, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]
