"""DeepSpeed's `mpu` argument, answered from megatron-core's parallel_state.

`deepspeed.initialize(mpu=parallel_state)` fails: DeepSpeed asks for
`get_model_parallel_rank`/`get_model_parallel_world_size`, which megatron-core lacks. And
without an mpu DeepSpeed treats tensor-parallel ranks as data-parallel replicas and
overwrites rank 1's shards with rank 0's, so pass `MegatronMPU()` whenever tp > 1.

The getters are the ones deepspeed 0.19 calls (engine, ZeRO 1-3, checkpointing, grad-norm).
Deliberately absent: `initialize_sequence_parallel` and the `get_sequence_*` getters, which
DeepSpeed reads as Ulysses sequence parallelism (its presence makes DeepSpeed drop the
data-parallel group); megatron's sequence parallelism lives inside the TP group instead.
Context parallelism is not used, so "data parallel" is megatron's plain data-parallel group.
"""

import torch.distributed as dist
from megatron.core import parallel_state as ps


class MegatronMPU:
    """Model (= tensor x pipeline), tensor, pipeline and data-parallel getters for DeepSpeed."""

    # Model parallel: the ranks that together hold one copy of the model.
    def get_model_parallel_group(self):
        return ps.get_model_parallel_group()

    def get_model_parallel_rank(self) -> int:
        return dist.get_rank(group=ps.get_model_parallel_group())

    def get_model_parallel_world_size(self) -> int:
        return dist.get_world_size(group=ps.get_model_parallel_group())

    def get_tensor_model_parallel_group(self):
        return ps.get_tensor_model_parallel_group()

    def get_tensor_model_parallel_rank(self) -> int:
        return ps.get_tensor_model_parallel_rank()

    def get_tensor_model_parallel_world_size(self) -> int:
        return ps.get_tensor_model_parallel_world_size()

    def get_tensor_model_parallel_src_rank(self) -> int:
        return ps.get_tensor_model_parallel_src_rank()

    def get_pipeline_model_parallel_group(self):
        return ps.get_pipeline_model_parallel_group()

    def get_pipeline_model_parallel_rank(self) -> int:
        return ps.get_pipeline_model_parallel_rank()

    def get_pipeline_model_parallel_world_size(self) -> int:
        return ps.get_pipeline_model_parallel_world_size()

    def get_data_parallel_group(self):
        return ps.get_data_parallel_group()

    def get_data_parallel_rank(self) -> int:
        return ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return ps.get_data_parallel_world_size()

    def get_data_parallel_group_ranks(self) -> list[int]:
        """Global ranks of this rank's data-parallel group (checkpoint writers use them)."""
        return dist.get_process_group_ranks(ps.get_data_parallel_group())
