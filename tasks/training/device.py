"""Where training runs and how: the device chosen (``auto``, ``cpu``, ``cuda:N``), seeded
determinism or autotuned speed, the CPU threads, and the precision of the forward pass.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from tasks.core.config import TrainParams
from tasks.core.errors import MlcycleError


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for a missing CUDA device is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise MlcycleError(
                f"train.device is {requested!r} but {count} CUDA device(s) are available; "
                "use auto, cpu" + (f" or cuda:0..cuda:{count - 1}" if count else "")
            )
    return device


def make_deterministic(seed: int, device: torch.device, deterministic: bool = True) -> None:
    """Seed every generator. On CUDA, ``deterministic`` picks deterministic kernels, so the same
    inputs give the same model file (DVC and the lineage records rely on it); without it cuDNN
    autotunes its convolutions for the shapes it sees and matrix products use TF32. CPU kernels
    are deterministic either way; the CPU gets every core this process may use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cuda":
        # cuBLAS reads this when it first initialises; it must be set before any CUDA work.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
    else:
        torch.set_num_threads(cpu_threads())


def cpu_threads() -> int:
    """The cores this process may run on, shared among the data-parallel processes of this
    machine (torchrun's ``LOCAL_WORLD_SIZE``): more threads than cores only adds contention."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def autocast_dtype(params: TrainParams, device: torch.device) -> torch.dtype | None:
    """The forward pass's reduced precision, or None for fp32. ``auto`` is bf16 on CUDA (same
    range as fp32: no loss scaling needed) and fp32 on CPU, where bf16 is only faster on
    processors with bf16 matrix units; ``bf16`` asks for it on either."""
    if params.precision == "fp32" or (params.precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def uses_convolutions(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on ``device``; convolutional nets on CUDA in channels_last, the layout its
    tensor cores want (the pixels arrive as N, H, W, C, so the input already has it)."""
    model = model.to(device)
    if device.type == "cuda" and uses_convolutions(model):
        model = model.to(memory_format=torch.channels_last)
    return model
