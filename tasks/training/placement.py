"""Where the splits live while a model trains, and how an epoch's batches reach the device.

Images stay uint8 (4x less memory and transfer than float) on the device when they fit, or in
pinned host memory, copied in batch by batch, when they do not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tasks.core.files import ImageDataset
from tasks.training.augment import Augmentation

# The training and validation images stay on the GPU while they take at most this share of its
# free memory; beyond it they stream from pinned host memory (the rest is for activations).
DEVICE_DATA_SHARE = 0.5


@dataclass(frozen=True)
class PlacedData:
    """A split ready for training: labels on the device; images on the device too, or in
    (pinned) host memory to be copied in batch by batch."""

    images: torch.Tensor
    labels: torch.Tensor
    on_device: bool

    def __len__(self) -> int:
        return len(self.labels)


def data_fits_on_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # the CPU's "device" memory is the host memory the data is already in
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_DATA_SHARE * free


def place_data(
    datasets: list[ImageDataset], device: torch.device, placement: str
) -> list[PlacedData]:
    """Each dataset on ``device`` (``train.data_placement``: device, host, or auto: the device
    while all of them together fit in its share of free memory). Images stay uint8 (4x less
    memory and transfer than float); the model casts per batch."""
    nbytes = sum(dataset.images.nbytes for dataset in datasets)
    on_device = placement == "device" or (
        placement == "auto" and data_fits_on_device(nbytes, device)
    )
    placed = []
    for dataset in datasets:
        images = torch.from_numpy(dataset.images)
        if on_device:
            images = images.to(device)
        elif device.type == "cuda":
            images = images.pin_memory()  # page-locked: copies to the GPU run asynchronously
        placed.append(PlacedData(images, torch.from_numpy(dataset.labels).to(device), on_device))
    return placed


def epoch_batches(
    data: PlacedData,
    order: torch.Tensor,
    augmentation: Augmentation,
    batch_size: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's (images, labels) batches on ``device``, in ``order`` (a CPU index tensor),
    augmented there, batch by batch: a copy of the whole epoch would double the train split's
    memory (on a GPU, where ``auto`` placement lets the data take half the free memory, past
    what is there). Resident data is gathered by indexing; streamed data into one of two pinned
    buffers and copied without blocking, so the host prepares the next batch while the device
    trains on this one."""
    rows_on_device = order.to(device)
    labels = data.labels[rows_on_device]
    rows_where_the_images_are = rows_on_device if data.on_device else order
    pinned = not data.on_device and device.type == "cuda"
    buffers = [
        torch.empty((batch_size + 1, *data.images.shape[1:]), dtype=data.images.dtype).pin_memory()
        for _ in range(2 if pinned else 0)
    ]
    copied: list[torch.cuda.Event | None] = [None, None]
    for number, batch in enumerate(batches(len(order), batch_size)):
        if not pinned:
            images = data.images[rows_where_the_images_are[batch]]
        else:
            rows = order[batch]
            slot = number % 2
            if copied[slot] is not None:
                copied[slot].synchronize()  # the copy out of this buffer has finished
            buffer = buffers[slot][: len(rows)]
            torch.index_select(data.images, 0, rows, out=buffer)
            images = buffer.to(device, non_blocking=True)
            copied[slot] = torch.cuda.Event()
            copied[slot].record()
        yield augmentation.apply(images, batch), labels[batch]


def batches(count: int, batch_size: int) -> list[slice]:
    """Consecutive slices; a trailing batch of one joins the previous one (batch norm needs 2)."""
    starts = list(range(0, count, batch_size))
    if len(starts) > 1 and count - starts[-1] == 1:
        starts.pop()
    return [slice(start, end) for start, end in zip(starts, [*starts[1:], count], strict=True)]
