"""`pretrain plan`: a layout's arithmetic in one CPU process, before anything reaches sbatch.

Checks the parallel layout and the batch arithmetic against a world size, then prints the
parameters (total and per GPU), memory per GPU (weights, gradients, optimizer state by ZeRO
stage, activations by checkpointing mode), FLOPs per step and the step time and throughput
expected at a given MFU on a given GPU. Arithmetic only: no torch, no process group.

Memory model (per GPU, N = parameters this GPU's model-parallel shard holds, d = data-parallel size):
- Mixed precision (bf16/fp16) Adam: 2 bytes weights + 2 gradients + 12 optimizer (fp32 master,
  two fp32 moments) per parameter; fp32 training: 4 + 4 + 8. ZeRO-1 divides the optimizer
  state by d, ZeRO-2 also the gradients, ZeRO-3 also the weights. With MoE at expert-parallel
  size e, a GPU holds 1/e of each layer's experts and ZeRO divides their state by d/e (the
  ranks holding the same experts); routers are replicated across TP like norms.
- Activations of the transformer layers, from Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models", Table 2), in bytes per layer for a micro-batch
  of b sequences of s tokens, hidden h, a heads, tensor parallelism t:
    none       sbh(10 + 24/t + 5as/(ht))      with sequence parallelism: sbh/t · (34 + 5as/h)
    selective  sbh(10 + 24/t)                 with sequence parallelism: 34·sbh/t
    full       2sbh                           with sequence parallelism: 2sbh/t
  The formulas are the paper's for 16-bit activations and GPT's 4h MLP with full multi-head
  attention; for a SwiGLU/GQA model they are the standard estimate, not an exact count. The
  5as/h term is the attention scores, which only megatron's unfused attention (model.attention
  =local) keeps: with SDPA, flash-attn or TE, "none" holds what "selective" does.
A GPU's memory fits a plan when the total is at most 90% of it: the rest goes to the CUDA
context, NCCL's buffers and the allocator's fragmentation.
"""

import argparse
import dataclasses
from dataclasses import dataclass

from pretrain import communication
from pretrain.communication import Bandwidth
from pretrain.config import Config, validate
from pretrain.errors import ConfigError, check_choice
from pretrain.model.flops import (
    expert_parameters,
    flops_per_token,
    layer_matmul_parameters,
    padded_vocab_size,
    router_parameters,
    total_parameters,
)
from pretrain.monitor.mfu import GPU_MEMORY_GIB, PEAK_FLOPS, peak_flops

GiB = 2**30
CHECKPOINTING = ("none", "selective", "full")
RECOMPUTE_COST = {"none": 1.0, "selective": 1.03, "full": 4 / 3}  # compute per step, relative
USABLE = 0.9  # of a GPU's memory (see above)
USUAL_GPUS_PER_NODE = 8  # HGX/DGX-style nodes, where tensor parallelism up to 8 stays on NVLink


@dataclass
class Layout:
    """Degrees of parallelism and the batch arithmetic of one run."""

    world_size: int
    tensor: int
    data: int
    micro_batch_size: int
    global_batch_size: int
    accumulation: int


def check_layout(cfg: Config, world_size: int, data_parallel_size: int | None = None) -> Layout:
    """The layout's degrees and batch arithmetic, or ConfigError naming the key at fault."""
    validate(cfg, world_size)  # TP divides the heads, query groups and world; global = micro x dp x accumulation
    tp = cfg.parallel.tensor_parallel_size
    dp = world_size // tp
    if data_parallel_size is not None and data_parallel_size != dp:
        raise ConfigError("--data-parallel-size", f"tensor {tp} x data {data_parallel_size} = "
                          f"{tp * data_parallel_size}, not the world size {world_size}")
    micro, global_batch = cfg.train.micro_batch_size, cfg.train.global_batch_size
    return Layout(world_size, tp, dp, micro, global_batch, global_batch // (micro * dp))


def vocab_size(cfg: Config) -> int:
    """The unpadded vocabulary: model.vocab_size, else the tokenizer's configured size."""
    return cfg.model.vocab_size or cfg.data.tokenizer.vocab_size


def parameters_per_gpu(cfg: Config, padded_vocab: int, tp: int, ep: int = 1) -> int:
    """Parameters on one GPU: the layers' TP shards, the embedding's, the output layer's (untied) and
    the final norm; norms and MoE routers are replicated across TP. With MoE, only 1/ep of each
    layer's experts (see expert_parameters_per_gpu)."""
    m = cfg.model
    experts, router = expert_parameters(m), router_parameters(m)
    split = layer_matmul_parameters(m) - experts - router
    layer = split // tp + router + experts // (tp * ep) + 2 * m.hidden_size
    embedding = padded_vocab * m.hidden_size // tp
    output = embedding if m.untie_embeddings_and_output_weights else 0
    return m.num_layers * layer + embedding + output + m.hidden_size


def expert_parameters_per_gpu(cfg: Config, tp: int, ep: int) -> int:
    """The experts' part of parameters_per_gpu: ZeRO partitions it over the dp/ep ranks holding the
    same experts, not over the whole data-parallel group."""
    return cfg.model.num_layers * (expert_parameters(cfg.model) // (tp * ep))


def state_bytes(params: int, precision: str, zero_stage: int, dp: int) -> dict[str, float]:
    """Weights, gradients and Adam state in bytes on one GPU, after ZeRO partitioning."""
    mixed = precision != "fp32"
    weights, grads, optimizer = (2, 2, 12) if mixed else (4, 4, 8)
    return {
        "weights": params * weights / (dp if zero_stage >= 3 else 1),
        "gradients": params * grads / (dp if zero_stage >= 2 else 1),
        "optimizer": params * optimizer / (dp if zero_stage >= 1 else 1),
    }


def activation_bytes_per_layer(s: int, b: int, h: int, a: int, t: int, mode: str, sequence_parallel: bool) -> float:
    """Korthikanti et al.'s activation memory of one layer (16-bit activations), in bytes."""
    sbh = s * b * h
    attention_scores = 5 * a * s / (h * t)
    if mode == "full":
        return 2 * sbh / (t if sequence_parallel else 1)
    if sequence_parallel:
        return sbh * (34 / t + (attention_scores if mode == "none" else 0))
    return sbh * (10 + 24 / t + (attention_scores if mode == "none" else 0))


def fits(memory_bytes: float, gpu: str) -> bool | None:
    """Whether a GPU's usable memory holds it; None for a GPU not in the table."""
    capacity = GPU_MEMORY_GIB.get(gpu)
    return None if capacity is None else memory_bytes <= USABLE * capacity * GiB


def plan(cfg: Config, world_size: int, gpu: str, mfu: float, checkpointing: str, sequence_parallel: bool = False,
         data_parallel_size: int | None = None, peak_override: float = 0.0, gpus_per_node: int = USUAL_GPUS_PER_NODE,
         bandwidth: Bandwidth = Bandwidth()) -> dict:
    """Every number `pretrain plan` prints, in a dict (bytes, FLOPs, seconds)."""
    check_choice("--activation-checkpointing", checkpointing, CHECKPOINTING)
    layout = check_layout(cfg, world_size, data_parallel_size)
    m, precision = cfg.model, cfg.train.precision
    vocab = vocab_size(cfg)
    padded = padded_vocab_size(vocab, m, layout.tensor)
    ep = cfg.parallel.expert_parallel_size
    per_gpu = parameters_per_gpu(cfg, padded, layout.tensor, ep)
    experts = expert_parameters_per_gpu(cfg, layout.tensor, ep)
    shared = state_bytes(per_gpu - experts, precision, cfg.parallel.zero_stage, layout.data)
    expert_state = state_bytes(experts, precision, cfg.parallel.zero_stage, layout.data // ep)
    memory = {part: shared[part] + expert_state[part] for part in shared}
    # Fused attention (SDPA, flash-attn, TE) keeps no s x s scores: without recomputation it holds
    # what selective recomputation leaves; only megatron's unfused attention stores the scores.
    kept = "selective" if checkpointing == "none" and getattr(m, "attention", "local") != "local" else checkpointing
    per_layer = activation_bytes_per_layer(m.seq_length, layout.micro_batch_size, m.hidden_size,
                                           m.num_attention_heads, layout.tensor, kept, sequence_parallel)
    memory["activations"] = per_layer * m.num_layers * (2 if precision == "fp32" else 1)
    memory["total"] = sum(memory.values())
    tokens_per_step = layout.global_batch_size * m.seq_length
    flops_per_step = flops_per_token(m, padded) * tokens_per_step
    peak = peak_override or peak_flops(gpu, precision)
    step_time = flops_per_step / (mfu * peak * world_size) if peak else None
    comm_bytes = {
        "data_parallel": communication.data_parallel_bytes(per_gpu, 4 if precision == "fp32" else 2, layout.data,
                                                           cfg.parallel.zero_stage, layout.accumulation),
        "tensor_parallel": communication.tensor_parallel_bytes(layout.micro_batch_size, m.seq_length, m.hidden_size,
                                                               m.num_layers, layout.tensor, layout.accumulation,
                                                               checkpointing),
    }
    comm_seconds = communication.communication_seconds(comm_bytes["data_parallel"], comm_bytes["tensor_parallel"],
                                                       world_size > gpus_per_node, bandwidth)
    return {
        "communication_bytes": comm_bytes, "communication_seconds": comm_seconds,
        "fits": fits(memory["total"], gpu),
        "layout": layout, "vocab": vocab, "padded_vocab": padded, "precision": precision,
        "zero_stage": cfg.parallel.zero_stage, "checkpointing": checkpointing, "sequence_parallel": sequence_parallel,
        "parameters": total_parameters(m, padded), "parameters_unpadded": total_parameters(m, vocab),
        "parameters_per_gpu": per_gpu, "memory": memory, "tokens_per_step": tokens_per_step,
        "flops_per_step": flops_per_step, "gpu": gpu, "mfu": mfu, "peak_flops": peak, "step_time": step_time,
        "tokens_per_second": tokens_per_step / step_time if step_time else None,
    }


def format_plan(p: dict) -> str:
    """The plan as the lines `pretrain plan` prints."""
    lo, mem = p["layout"], p["memory"]
    lines = [
        f"layout       {lo.world_size} GPUs = tensor {lo.tensor} x data {lo.data}; "
        f"ZeRO-{p['zero_stage']}, {p['precision']}",
        f"batch        global {lo.global_batch_size} = micro {lo.micro_batch_size} x data {lo.data} x "
        f"accumulation {lo.accumulation}; {p['tokens_per_step']:,} tokens per step",
        f"parameters   {p['parameters']:,} ({p['parameters'] / 1e9:.2f}B; {p['parameters_unpadded']:,} without the "
        f"vocabulary padding {p['vocab']} -> {p['padded_vocab']}); {p['parameters_per_gpu']:,} per GPU",
        "memory/GPU   " + " + ".join(f"{k} {mem[k] / GiB:.2f}" for k in ("weights", "gradients", "optimizer",
                                                                          "activations"))
        + f" = {mem['total'] / GiB:.2f} GiB (activations: checkpointing {p['checkpointing']}"
        + (", sequence parallel)" if p["sequence_parallel"] else ")"),
        f"compute      {p['flops_per_step']:.4g} FLOPs per step",
    ]
    if p["step_time"]:
        lines.append(f"expected     at {p['mfu']:.0%} MFU of {p['gpu']} ({p['peak_flops'] / 1e12:.1f} TFLOP/s "
                     f"{p['precision']} dense): {p['step_time']:.3g} s per step, {p['tokens_per_second']:,.0f} "
                     f"tokens/s ({p['tokens_per_second'] / lo.world_size:,.0f} per GPU)")
    else:
        lines.append(f"expected     no {p['precision']} peak for {p['gpu']} in the table: pass --peak-flops")
    sent, seconds = p["communication_bytes"], p["communication_seconds"]
    lines.append(f"comm/GPU     data parallel {sent['data_parallel'] / GiB:.2f} GiB per step "
                 f"({seconds['data_parallel']:.3g} s), tensor parallel {sent['tensor_parallel'] / GiB:.2f} GiB "
                 f"({seconds['tensor_parallel']:.3g} s), not overlapped")
    if p["fits"] is not None:
        capacity = GPU_MEMORY_GIB[p["gpu"]]
        verdict = "yes" if p["fits"] else "no"
        lines.append(f"fits         {verdict}: {mem['total'] / GiB:.2f} GiB of {USABLE * capacity:.0f} "
                     f"usable on a {p['gpu']} ({capacity} GiB, {1 - USABLE:.0%} kept for CUDA, NCCL and fragmentation)")
    return "\n".join(lines)


def estimated_step_seconds(compute_seconds: float, checkpointing: str, comm: dict) -> float:
    """Compute (with recomputation) plus communication, none of it overlapped: a ranking, not a forecast."""
    return compute_seconds * RECOMPUTE_COST[checkpointing] + sum(comm.values())


def recommend(cfg: Config, world_size: int, gpu: str, mfu: float, gpus_per_node: int,
              bandwidth: Bandwidth = Bandwidth(), peak_override: float = 0.0) -> dict | None:
    """The fastest layout that fits: tensor parallelism within a node (1-8), ZeRO 1-3, each
    checkpointing mode, sequence parallel with TP, ranked by compute (with recomputation) plus
    unoverlapped communication. None when nothing fits or the GPU's peak or memory is unknown."""
    best = None
    for candidate in _candidates(cfg, gpus_per_node):
        for checkpointing in CHECKPOINTING:
            try:
                p = plan(candidate, world_size, gpu, mfu, checkpointing, candidate.parallel.tensor_parallel_size > 1,
                         peak_override=peak_override, gpus_per_node=gpus_per_node, bandwidth=bandwidth)
            except ConfigError:
                continue  # TP does not divide the heads, the batch arithmetic breaks, ...
            if not p["fits"] or not p["step_time"]:
                continue
            p["estimated_step_time"] = estimated_step_seconds(p["step_time"], checkpointing, p["communication_seconds"])
            if best is None or p["estimated_step_time"] < best["estimated_step_time"]:
                best = p
    return best


def _candidates(cfg: Config, gpus_per_node: int):
    for tp in (1, 2, 4, 8):
        if tp > gpus_per_node:
            break
        for zero in (1, 2, 3):
            parallel = dataclasses.replace(cfg.parallel, tensor_parallel_size=tp, zero_stage=zero)
            yield dataclasses.replace(cfg, parallel=parallel)


def format_recommendation(p: dict | None) -> str:
    if p is None:
        return "recommended  nothing fits (or the GPU's peak or memory is unknown): more GPUs, a smaller micro batch"
    lo, comm = p["layout"], sum(p["communication_seconds"].values())
    compute = p["step_time"] * RECOMPUTE_COST[p["checkpointing"]]
    return (f"recommended  tensor {lo.tensor}, ZeRO-{p['zero_stage']}, checkpointing {p['checkpointing']}"
            f"{', sequence parallel' if p['sequence_parallel'] else ''}: {p['memory']['total'] / GiB:.1f} GiB per GPU, "
            f"about {p['estimated_step_time']:.3g} s per step (compute {compute:.3g} + communication {comm:.3g})")


def add_options(sub: argparse.ArgumentParser) -> None:
    """The `pretrain plan` options beyond the Hydra overrides."""
    sub.add_argument("--nodes", type=int, default=None, help="Nodes (default: cluster.nodes).")
    sub.add_argument("--gpus-per-node", type=int, default=None,
                     help="GPUs per node (default: cluster.gpus_per_node, else parallel.nproc_per_node "
                          "when above 1, else 8).")
    sub.add_argument("--world-size", type=int, default=None, help="Total GPUs (instead of nodes x GPUs per node).")
    sub.add_argument("--data-parallel-size", type=int, default=None,
                     help="Check that tensor x data equals the world size.")
    sub.add_argument("--gpu", default="h100_sxm", choices=sorted(PEAK_FLOPS), help="GPU type for the peak FLOP/s.")
    sub.add_argument("--peak-flops", type=float, default=0.0, help="Peak FLOP/s of one GPU (instead of --gpu's).")
    sub.add_argument("--mfu", type=float, default=0.4, help="Model FLOPs utilization to assume (default 0.4).")
    sub.add_argument("--activation-checkpointing", default=None, choices=CHECKPOINTING,
                     help="Recompute mode for activation memory (default: the config's, else none).")
    sub.add_argument("--sequence-parallel", action="store_true", default=None,
                     help="Megatron sequence parallelism (default: the config's).")
    sub.add_argument("--nvlink-gbs", type=float, default=400.0,
                     help="GB/s one GPU moves in a collective inside a node (default 400, H100 NVLink).")
    sub.add_argument("--network-gbs", type=float, default=50.0,
                     help="GB/s per GPU between nodes (default 50: one 400 Gb/s InfiniBand port per GPU).")


def _config_value(cfg: Config, name: str, default):
    # Read from whichever component config carries the field, if any does.
    for part in (cfg.model, cfg.parallel, cfg.train):
        if hasattr(part, name):
            return getattr(part, name)
    return default


def gpus_per_node_of(cfg: Config, args) -> tuple[int, str]:
    """GPUs per node and where the number comes from: --gpus-per-node, else the cluster profile's,
    else parallel.nproc_per_node above 1, else the usual 8 (nproc_per_node's default of 1 is no
    statement about the nodes, and would keep the recommendation from trying tensor parallelism)."""
    if args.gpus_per_node is not None:
        if args.gpus_per_node <= 0:
            raise ConfigError("--gpus-per-node", f"must be > 0, got {args.gpus_per_node}")
        return args.gpus_per_node, "from --gpus-per-node"
    if cfg.cluster.gpus_per_node:
        return cfg.cluster.gpus_per_node, "from cluster.gpus_per_node"
    if cfg.parallel.nproc_per_node > 1:
        return cfg.parallel.nproc_per_node, "from parallel.nproc_per_node"
    return USUAL_GPUS_PER_NODE, ("assumed, the usual node: no --gpus-per-node, cluster.gpus_per_node "
                                 "or parallel.nproc_per_node above 1")


def world_size_of(cfg: Config, args, gpus_per_node: int) -> int:
    return args.world_size or (args.nodes or cfg.cluster.nodes) * gpus_per_node


def run(cfg: Config, args) -> int:
    """`pretrain plan`: print the plan of the composed config."""
    if not 0 < args.mfu <= 1:
        raise ConfigError("--mfu", f"must be in (0, 1], got {args.mfu}")
    checkpointing = args.activation_checkpointing or _config_value(cfg, "activation_checkpointing", "none")
    sequence_parallel = args.sequence_parallel or bool(_config_value(cfg, "sequence_parallel", False))
    per_node, source = gpus_per_node_of(cfg, args)
    world_size = world_size_of(cfg, args, per_node)
    if world_size <= 0:
        raise ConfigError("--world-size", f"must be > 0, got {world_size}")
    if args.nvlink_gbs <= 0 or args.network_gbs <= 0:
        raise ConfigError("--nvlink-gbs" if args.nvlink_gbs <= 0 else "--network-gbs", "must be > 0")
    bandwidth = Bandwidth(args.nvlink_gbs * 1e9, args.network_gbs * 1e9)
    lines = format_plan(plan(cfg, world_size, args.gpu, args.mfu, checkpointing, sequence_parallel,
                             args.data_parallel_size, args.peak_flops, per_node, bandwidth))
    print(f"GPUs/node    {per_node} ({source})\n{lines}")
    print(format_recommendation(recommend(cfg, world_size, args.gpu, args.mfu, per_node, bandwidth, args.peak_flops)))
    return 0
