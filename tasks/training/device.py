"""Where training runs: the device chosen (``auto``, ``cpu``, ``cuda:N``) and seeded
determinism.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

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


def make_deterministic(seed: int, device: torch.device) -> None:
    """Seed every generator; on CUDA also pick deterministic kernels, so the same inputs give
    the same model file (DVC and the lineage records rely on it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cuda":
        # cuBLAS reads this when it first initialises; it must be set before any CUDA work.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
