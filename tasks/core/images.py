"""Pixel operations shared by the data stages and serving: decode, fit (channels, size), moments.

The one implementation of input fitting: training data and served images go through it, so a
model always sees pixels prepared the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.core.errors import MlcycleError

# ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


class ImageFormatError(MlcycleError):
    """An image whose pixel format the pipeline does not take."""


CHUNK = 8192  # images per resize/statistics chunk: bounds memory on large datasets

COLOUR_CHANNELS = (1, 3)  # grey or RGB: the channel counts the pipeline converts between
PIXEL_MAX = 255  # the canonical pixel type is uint8: 0..255


def prepare_images(images: np.ndarray, image_size: int | None, channels: int | None) -> np.ndarray:
    """Resize to ``image_size`` squared and convert to ``channels``; ``None`` keeps either.

    The one implementation of input fitting: training data and, later, served images go
    through it, so a model always sees pixels prepared the same way.
    """
    if channels is not None and images.shape[-1] != channels:
        images = convert_channels(images, channels)
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        images = resize(images, image_size)
    return images


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    luma = np.tensordot(images.astype(np.float32), LUMA_WEIGHTS.astype(np.float32), axes=1)
    return np.clip(np.rint(luma), 0, PIXEL_MAX).astype(np.uint8)[..., np.newaxis]


def resize(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased when shrinking, to ``size`` squared or (height, width); uint8 in,
    uint8 out, chunked to bound memory."""
    import torch
    import torch.nn.functional as functional

    height, width = (size, size) if isinstance(size, int) else size
    out = np.empty((len(images), height, width, images.shape[-1]), dtype=np.uint8)
    for start in range(0, len(images), CHUNK):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + CHUNK]))
        batch = batch.permute(0, 3, 1, 2).float()
        resized = functional.interpolate(
            batch, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + CHUNK] = (
            resized.round().clamp(0, PIXEL_MAX).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )
    return out


def pixels_from_image(image: object, path: Path | str) -> np.ndarray:
    """A PIL image as uint8 H x W x C pixels (C 1 or 3), as every image source lands them."""
    mode = image.mode  # type: ignore[attr-defined]
    if mode in ("1", "L", "LA"):
        image = image.convert("L")  # type: ignore[attr-defined]
    elif mode in ("P", "RGBA", "CMYK", "YCbCr", "RGB"):
        image = image.convert("RGB")  # type: ignore[attr-defined]
    else:
        raise ImageFormatError(f"{path}: unsupported pixel mode {mode} (expected 8-bit L or RGB)")
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., np.newaxis] if pixels.ndim == 2 else pixels


def uint8_pixels(images: np.ndarray, what: str) -> np.ndarray:
    """``images`` as the canonical uint8: integers in 0..255 are cast, anything else refused
    (floats have no one scale to guess: 0..1 and 0..255 are both common)."""
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind in "iu":
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > PIXEL_MAX:
            raise ImageFormatError(
                f"{what}: integer pixels range {low}..{high}; expected 0..{PIXEL_MAX}"
            )
        return images.astype(np.uint8)
    raise ImageFormatError(
        f"{what}: pixels are {images.dtype}; expected uint8 (or integers in 0..{PIXEL_MAX}). "
        f"Scale float images to 0..{PIXEL_MAX} and cast them to uint8 first"
    )


def mean_and_std(
    total: np.ndarray, total_sq: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std from running sums of values and of their squares.

    Sums, not ``np.std``: callers accumulate them chunk by chunk (bounded memory on large
    datasets), in exact integers where the pixels are uint8.
    """
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
