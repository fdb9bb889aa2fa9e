"""Process groups and megatron-core parallel state: who this process is in the parallel layout.

Tensor parallelism takes `tensor_parallel_size` consecutive ranks (megatron's order, so a TP
group stays inside a node); data parallelism takes the rest of the world. DeepSpeed later
works over the data-parallel groups through `pretrain.parallel.mpu.MegatronMPU`.
"""

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pretrain.errors import ConfigError
from pretrain.parallel import cpu_compat
from pretrain.parallel.config import ParallelConfig


@dataclass
class ParallelLayout:
    """Where this process sits: world_size = tensor_parallel_size x data_parallel_size."""

    world_size: int
    """Processes in the job."""
    rank: int
    """Global rank."""
    local_rank: int
    """Rank on this node; picks the GPU."""
    tensor_parallel_size: int
    """Ranks that split each layer's weights (consecutive global ranks)."""
    data_parallel_size: int
    """Model replicas, each fed different batches."""
    tensor_parallel_rank: int
    """Which weight shard this rank holds."""
    data_parallel_rank: int
    """Which data shard this rank reads: ranks of one TP group read the same batches."""
    expert_parallel_size: int = 1
    """Ranks of the data-parallel group that split each MoE layer's experts between them."""


def check_layout(cfg: ParallelConfig, world_size: int) -> None:
    """Raise ConfigError unless the tensor-parallel size divides the world size."""
    tp = cfg.tensor_parallel_size
    if world_size % tp:
        raise ConfigError(
            "parallel.tensor_parallel_size",
            f"{tp} does not divide the world size {world_size} (processes in the job)",
        )


def resolve_backend(cfg: ParallelConfig) -> str:
    """The torch.distributed backend: nccl with CUDA, gloo without, unless set explicitly."""
    if cfg.backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if cfg.backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("parallel.backend", "nccl needs a CUDA device; use gloo or auto")
    return cfg.backend


def init_distributed(cfg: ParallelConfig, seed: int) -> ParallelLayout:
    """Create the process group and megatron's parallel state, seed the RNGs, return the layout."""
    _default_single_process_env()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    check_layout(cfg, world_size)
    backend = resolve_backend(cfg)

    cpu_compat.apply()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, world_size=world_size, rank=rank)

    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=cfg.tensor_parallel_size,
                                             expert_model_parallel_size=cfg.expert_parallel_size)
    set_seed(seed)
    return ParallelLayout(
        world_size=world_size,
        rank=rank,
        local_rank=local_rank,
        tensor_parallel_size=cfg.tensor_parallel_size,
        data_parallel_size=world_size // cfg.tensor_parallel_size,
        tensor_parallel_rank=parallel_state.get_tensor_model_parallel_rank(),
        data_parallel_rank=parallel_state.get_data_parallel_rank(),
        expert_parallel_size=cfg.expert_parallel_size,
    )


def set_seed(seed: int) -> None:
    """Seed torch's default generators and megatron's tracked RNG states (per TP rank)."""
    from megatron.core import tensor_parallel

    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    """Tear down megatron's parallel state and the default process group."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _default_single_process_env() -> None:
    # Not under torchrun/srun: one process. DeepSpeed needs these variables too (without
    # them it tries MPI discovery), so they are set in the environment, not just passed on.
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ["RANK"] = "0"
    os.environ["WORLD_SIZE"] = "1"
    os.environ.setdefault("LOCAL_RANK", "0")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
