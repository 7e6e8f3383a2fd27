"""How data-parallel processes share the work, and what is refused before they start."""

import pytest
import torch

from tasks.core.config import load_params
from tasks.lifecycle.preflight import check_run
from tasks.training.distributed import SINGLE, DistributedError, Shard, torchrun_command
from tests.helpers import REPO_ROOT


@pytest.mark.parametrize(("count", "world"), [(10, 2), (11, 2), (11, 3), (5, 8)])
def test_every_sample_is_dealt_and_every_process_takes_as_many(count, world):
    shares = [Shard(rank, world).positions(count) for rank in range(world)]
    assert len({len(share) for share in shares}) == 1  # the same number of steps everywhere
    dealt = torch.cat(shares)
    assert set(dealt.tolist()) == set(range(count))
    assert len(dealt) - count < world  # padding only to the next multiple


def test_one_process_takes_the_epoch_in_order():
    assert torch.equal(SINGLE.positions(7), torch.arange(7))
    assert SINGLE.mean_of_epoch(0.5, 0.9, 10) == (0.5, 0.9)
    assert SINGLE.from_main(0.1, 0.2) == (0.1, 0.2)


def test_the_batch_splits_evenly_or_the_key_is_named():
    assert Shard(0, 4).per_process_batch(64) == 16
    with pytest.raises(DistributedError, match=r"train\.batch_size 64 .* 3 processes"):
        Shard(0, 3).per_process_batch(64)


def test_a_run_that_cannot_split_its_batch_is_refused_before_it_starts():
    with pytest.raises(DistributedError, match=r"train\.batch_size"):
        check_run(load_params(REPO_ROOT / "params.yaml", overrides=["train.processes=3"]))
    check_run(load_params(REPO_ROOT / "params.yaml", overrides=["train.processes=2"]))


def test_the_stage_is_launched_through_torchrun():
    command = torchrun_command(4, "tasks.stages.train")
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert command[-3:] == ["--nproc_per_node=4", "-m", "tasks.stages.train"]
