"""An extra evaluator as a user would write one: its own data, collectives over the data-parallel group."""

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from pretrain.data.loader import ShardedSamples, valid_batches


class TargetCount:
    """Counts the validation tokens predicted across all data-parallel ranks (a stand-in for accuracy)."""

    name = "sample_evaluator"

    def __init__(self, cfg):
        self.batches = valid_batches(ShardedSamples(cfg.data.dataset_dir, "valid"), cfg.train.eval_samples,
                                     cfg.train.micro_batch_size, parallel_state.get_data_parallel_rank(),
                                     parallel_state.get_data_parallel_world_size())

    def evaluate(self, trainer) -> dict[str, float]:
        count = torch.tensor([sum(b["tokens"][:, 1:].numel() for b in self.batches)], dtype=torch.float64)
        dist.all_reduce(count, group=parallel_state.get_data_parallel_group())
        return {"targets": count.item()}


def token_count(cfg, tokenizer) -> TargetCount:
    return TargetCount(cfg)
