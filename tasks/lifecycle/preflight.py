"""Checks before anything is written: params that parse can still ask for what this machine
cannot give (a GPU it lacks, more memory than it has), or read data DVC does not watch.
``mlcycle run`` checks them before it writes ``params.yaml``, so a refused override never
stays behind to break the next run."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.core.config import ConfigError, Params
from tasks.core.files import read_json
from tasks.core.paths import RAW_DIR
from tasks.stages.collect import check_source_location
from tasks.training.device import resolve_device
from tasks.training.distributed import check_processes

DIGITS_SAMPLES = 1797  # what sklearn-digits holds, when data/raw does not say yet
# The processed images (uint8) are held a few times over while preprocessing and training
# (the split, the copy on the device, a float batch): room for this many copies is required.
COPIES_IN_MEMORY = 3


def check_run(params: Params, raw_dir: Path = RAW_DIR) -> None:
    """ConfigError naming the key when this machine cannot run ``params``."""
    device = resolve_device(params.train.device)
    check_processes(params.train.processes, params.train.batch_size, device)
    check_source_location(params.collect)
    check_image_memory(params, raw_dir)


def check_image_memory(params: Params, raw_dir: Path = RAW_DIR) -> None:
    size, channels = params.preprocess.image_size, params.preprocess.channels
    if size is None:
        return
    samples, source_channels = _dataset_size(params, raw_dir)
    per_image = size * size * (channels or source_channels)
    needed = per_image * samples * COPIES_IN_MEMORY
    available = available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"preprocess.image_size={size}: {samples} images of {size}x{size}x"
            f"{channels or source_channels} need about {_gib(needed)} in memory, and this "
            f"machine has {_gib(available)} available; choose a smaller image_size "
            f"(at most about {_largest_side(available, samples, channels or source_channels)})"
        )


def _dataset_size(params: Params, raw_dir: Path) -> tuple[int, int]:
    """(samples, channels) of the data the run will preprocess, as far as known now."""
    meta = raw_dir / "meta.json"
    if meta.is_file():
        info = read_json(meta)
        return int(info["num_samples"]), int(info["image_shape"][2])
    if params.collect.source == "sklearn-digits":
        return params.collect.augment_to or DIGITS_SAMPLES, 1
    return 1, 3  # unknown until collected: at least one image must fit


def available_memory() -> int | None:
    """Bytes this machine can still hand out (MemAvailable), or None where that is unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _largest_side(available: int, samples: int, channels: int) -> int:
    return int((available / (samples * channels * COPIES_IN_MEMORY)) ** 0.5)


def _gib(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
