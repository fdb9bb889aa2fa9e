"""Configuration of the parallel layout: processes, tensor/sequence/expert parallelism, ZeRO."""

from dataclasses import dataclass

from pretrain.errors import check_choice, check_positive


@dataclass
class ParallelConfig:
    nproc_per_node: int = 1
    """Processes per node when `pretrain train` launches torchrun itself (not under torchrun/srun)."""
    tensor_parallel_size: int = 1
    """megatron-core tensor parallelism; data parallelism takes the rest of the world."""
    sequence_parallel: bool = False
    """megatron sequence parallelism: norms and dropout split the sequence over the TP group
    (activation memory / tp); needs tensor_parallel_size > 1 (a no-op with a warning otherwise)."""
    expert_parallel_size: int = 1
    """MoE expert parallelism: ranks (inside the data-parallel group) that split the experts."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage 0-3."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl with CUDA, gloo without), nccl or gloo."""

    def __post_init__(self):
        check_positive("parallel.nproc_per_node", self.nproc_per_node)
        check_positive("parallel.tensor_parallel_size", self.tensor_parallel_size)
        check_positive("parallel.expert_parallel_size", self.expert_parallel_size)
        check_choice("parallel.zero_stage", self.zero_stage, (0, 1, 2, 3))
        check_choice("parallel.backend", self.backend, ("auto", "nccl", "gloo"))
