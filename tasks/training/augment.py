"""Augmentation as tensor ops on the device, never per sample in Python: random translations
of the raw pixels (the shift a digit or an object tolerates) and left-right mirroring (for
photographs, not for digits).

The random draws for a whole epoch are made up front (:func:`draw_augmentation`), then applied
to any slice of it (:meth:`Augmentation.apply`): applied to the epoch at once or batch by
batch as the batches stream in, the same draws give the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    max_shift: int
    offsets: torch.Tensor | None  # (2, N): row and column start in the padded image
    flips: torch.Tensor | None  # (N,) bool: mirror this image

    def apply(self, images: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """``images`` (n, H, W, C) are the epoch's samples ``rows``, in the epoch's order."""
        if self.offsets is not None:
            images = _shift(images, self.offsets[:, rows].to(images.device), self.max_shift)
        if self.flips is not None:
            mirror = self.flips[rows].to(images.device)[:, None, None, None]
            images = torch.where(mirror, images.flip(2), images)
        return images


def take(augmentation: Augmentation, positions: torch.Tensor) -> Augmentation:
    """The draws of the epoch's ``positions`` (one data-parallel process's share), in order."""
    offsets, flips = augmentation.offsets, augmentation.flips
    return Augmentation(
        augmentation.max_shift,
        None if offsets is None else offsets[:, positions],
        None if flips is None else flips[positions],
    )


def draw_augmentation(
    count: int, max_shift: int, flip: bool, generator: torch.Generator
) -> Augmentation:
    """The random part of one epoch's augmentation for ``count`` samples (from ``generator``,
    seeded: reproducible); nothing is drawn for what is switched off."""
    offsets = (
        torch.randint(0, 2 * max_shift + 1, (2, count), generator=generator) if max_shift else None
    )
    flips = torch.rand(count, generator=generator) < 0.5 if flip else None
    return Augmentation(max_shift, offsets, flips)


def _shift(images: torch.Tensor, starts: torch.Tensor, max_shift: int) -> torch.Tensor:
    count, height, width, _ = images.shape
    rows_start, cols_start = starts
    padded = F.pad(images.permute(0, 3, 1, 2), (max_shift,) * 4).permute(0, 2, 3, 1)
    rows = rows_start[:, None] + torch.arange(height, device=images.device)  # (N, H)
    cols = cols_start[:, None] + torch.arange(width, device=images.device)  # (N, W)
    batch = torch.arange(count, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]
