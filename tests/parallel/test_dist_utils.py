"""The multi-process helper the other distributed tests build on."""

import torch
import torch.distributed as dist
from dist_utils import spawn


def rank_sum(offset: int) -> tuple[int, int, float]:
    value = torch.tensor([float(dist.get_rank() + offset)])
    dist.all_reduce(value)
    return dist.get_rank(), dist.get_world_size(), value.item()


def test_spawn_runs_a_function_in_a_gloo_group_and_returns_each_rank_result():
    assert spawn(rank_sum, 2, 10) == [(0, 2, 21.0), (1, 2, 21.0)]
