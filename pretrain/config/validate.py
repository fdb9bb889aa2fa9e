"""Checks across components, run before any process group, model or file is created."""

import sys

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
    check_model_parallel_features(cfg, tp, dp)


def check_model_parallel_features(cfg: Config, tp: int, dp: int) -> None:
    """Sequence parallel, experts and document masking against the layout and the attention backend."""
    model, parallel = cfg.model, cfg.parallel
    if parallel.sequence_parallel and tp == 1:
        print("pretrain: warning: parallel.sequence_parallel does nothing with tensor_parallel_size=1",
              file=sys.stderr)
    if parallel.sequence_parallel and tp > 1 and model.seq_length % tp:
        raise ConfigError("model.seq_length", f"{model.seq_length} is not divisible by tensor_parallel_size={tp} "
                          "(sequence parallel splits the sequence)")
    if model.moe.enabled and tp > 1 and not parallel.sequence_parallel:
        raise ConfigError("parallel.sequence_parallel", "mixture of experts with tensor_parallel_size > 1 "
                          "needs sequence_parallel=true")
    check_expert_parallel(cfg, dp)
    if model.document_masking == "block_causal" and model.attention in ("flash", "te"):
        raise ConfigError("model.document_masking", f"block_causal needs attention sdpa, local or auto, "
                          f"not model.attention={model.attention}")


def check_expert_parallel(cfg: Config, dp: int) -> None:
    """Experts are split over expert_parallel_size ranks of the data-parallel group."""
    ep, experts = cfg.parallel.expert_parallel_size, cfg.model.moe.num_experts
    if ep == 1:
        return
    if not experts:
        raise ConfigError("parallel.expert_parallel_size", f"{ep} needs model.moe.num_experts > 0")
    if dp % ep:
        raise ConfigError("parallel.expert_parallel_size", f"{ep} does not divide the data-parallel size {dp}")
    if experts % ep:
        raise ConfigError("parallel.expert_parallel_size", f"{ep} does not divide model.moe.num_experts={experts}")
    if cfg.parallel.zero_stage not in (1, 2):
        # See pretrain.parallel.experts: where each rank's experts and their optimizer state live.
        raise ConfigError("parallel.expert_parallel_size", f"{ep} needs parallel.zero_stage 1 or 2, "
                          f"not {cfg.parallel.zero_stage}")
