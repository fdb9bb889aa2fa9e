"""Checks across components, run before any process group, model or file is created."""

from pretrain.config.schema import Config
from pretrain.errors import ConfigError


def validate(cfg: Config, world_size: int) -> None:
    """Check the batch arithmetic and the parallel layout against the world size."""
    tp = cfg.parallel.tensor_parallel_size
    if cfg.model.num_attention_heads % tp:
        raise ConfigError("parallel.tensor_parallel_size",
                          f"{tp} does not divide model.num_attention_heads={cfg.model.num_attention_heads}")
    if cfg.model.num_query_groups % tp:
        raise ConfigError("parallel.tensor_parallel_size",
                          f"{tp} does not divide model.num_query_groups={cfg.model.num_query_groups}")
    if world_size % tp:
        raise ConfigError("parallel.tensor_parallel_size", f"{tp} does not divide the world size {world_size}")
    dp = world_size // tp
    per_step = cfg.train.micro_batch_size * dp
    if cfg.train.global_batch_size % per_step:
        raise ConfigError("train.global_batch_size",
                          f"{cfg.train.global_batch_size} is not divisible by micro_batch_size x data-parallel size "
                          f"= {cfg.train.micro_batch_size} x {dp}")
    if cfg.model.seq_length != cfg.data.shard.sequence_length:
        raise ConfigError("model.seq_length",
                          f"{cfg.model.seq_length} differs from "
                          f"data.shard.sequence_length={cfg.data.shard.sequence_length}")
    if cfg.train.precision == "bf16" and tp > 1 and cfg.parallel.zero_stage == 0:
        # DeepSpeed's bf16 optimizer at stage 0 reports only rank 0's share of the grad norm
        # under tensor parallelism, so clipping would be too weak.
        raise ConfigError("parallel.zero_stage", "bf16 with tensor_parallel_size > 1 needs zero_stage >= 1")
