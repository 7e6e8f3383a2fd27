"""Data-parallel training with PyTorch's own engine: ``torchrun`` starts the processes,
DistributedDataParallel (DDP) averages the gradients (NCCL between GPUs, gloo on CPUs).

Every process holds the whole (device-resident) data and the same seeded epoch order; each
trains on its own interleaved share of it, as ``DistributedSampler`` deals them, with
``train.batch_size / processes`` samples a step, so one step still sees ``train.batch_size``
samples and the same settings train the same way on any number of processes. Rank 0 alone
logs, checkpoints and writes the model; every process validates on the whole validation split,
and rank 0's numbers decide early stopping for all.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from tasks.core.errors import MlcycleError


class DistributedError(MlcycleError):
    """Data-parallel training cannot start as asked."""


@dataclass(frozen=True)
class Shard:
    """This process's place among the data-parallel processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def per_process_batch(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise DistributedError(
                f"train.batch_size {batch_size} does not split evenly over {self.world} "
                f"processes; use a multiple of {self.world}"
            )
        return batch_size // self.world

    def positions(self, count: int) -> torch.Tensor:
        """This process's positions in an epoch of ``count`` samples: every ``world``-th from
        ``rank``, the epoch padded with its first samples to a multiple of ``world`` (as
        DistributedSampler does: every process takes the same number of steps)."""
        padded = torch.arange(-(-count // self.world) * self.world) % count
        return padded[self.rank :: self.world]

    def mean_of_epoch(self, loss: float, accuracy: float, count: int) -> tuple[float, float]:
        """The epoch's training loss and accuracy over all processes' samples."""
        if not self.parallel:
            return loss, accuracy
        totals = torch.tensor(
            [loss * count, accuracy * count, count], dtype=torch.float64, device=_wire()
        )
        dist.all_reduce(totals)
        return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()

    def from_main(self, *values: float) -> tuple[float, ...]:
        """Rank 0's values on every process (validation numbers: one early-stopping verdict)."""
        if not self.parallel:
            return values
        shared = torch.tensor(values, dtype=torch.float64, device=_wire())
        dist.broadcast(shared, src=0)
        return tuple(shared.tolist())


SINGLE = Shard()


def _wire() -> torch.device:
    """Where a collective's tensors must be: NCCL moves CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_processes(processes: int, batch_size: int, device: torch.device) -> None:
    """DistributedError naming the key when ``processes`` cannot train here: one GPU each on
    CUDA, and a batch that splits evenly among them."""
    if processes > 1 and device.type == "cuda" and processes > torch.cuda.device_count():
        raise DistributedError(
            f"train.processes is {processes} but this machine has {torch.cuda.device_count()} "
            "GPU(s); each process trains on a GPU of its own (several machines: run torchrun "
            "with --nnodes on each, see docs/guide/training.md)"
        )
    Shard(world=processes).per_process_batch(batch_size)


def shard_from_env() -> Shard:
    """The shard torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    return Shard(
        rank=int(os.environ.get("RANK", "0")),
        world=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def join(shard: Shard, device: torch.device) -> torch.device:
    """Join the process group (once): NCCL on CUDA, gloo on CPU. Returns this process's
    device: its own GPU (``cuda:LOCAL_RANK``) on CUDA."""
    if device.type == "cuda":
        if shard.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"process {shard.local_rank} of this machine has no GPU: "
                f"{torch.cuda.device_count()} present; lower train.processes (--nproc_per_node)"
            )
        device = torch.device("cuda", shard.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class TrainingStep(nn.Module):
    """The model's training objective as a module's forward, the call DDP hooks its gradient
    averaging into."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.training_loss(images, labels, loss_fn)


def parallel_step(model: nn.Module, shard: Shard) -> nn.Module:
    """The training step of ``model`` under DDP, which broadcasts rank 0's weights now and
    averages the gradients in every backward pass. ``static_graph``: the same parameters take
    part in every step, and some never do (the stacked autoencoder's decoders while it is
    fine-tuned), which DDP then tolerates."""
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(
        TrainingStep(model),
        device_ids=[device] if device.type == "cuda" else None,
        static_graph=True,
    )


def torchrun_command(processes: int, module: str) -> list[str]:
    """The command that runs ``python -m module`` in ``processes`` data-parallel processes on
    this machine (a rendezvous of its own, on a free port)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        module,
    ]
