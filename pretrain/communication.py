"""Communication per training step, from the layout and the model's sizes, for `pretrain plan`.
Arithmetic only (no torch), like the rest of the plan.

Bytes are what one GPU sends per optimizer step with ring collectives: an all-reduce of S
bytes over n ranks sends 2(n-1)/n·S, a reduce-scatter or an all-gather (n-1)/n·S.

- Data parallelism (d ranks, a micro-batches accumulated, P parameters per GPU, g bytes per
  gradient element: 2 in bf16/fp16, 4 in fp32), as DeepSpeed runs it (reduce_scatter on):
    ZeRO-0      all-reduce of the gradients once per step:                 2(d-1)/d·P·g
    ZeRO-1      reduce-scatter of the gradients, all-gather of the updated
                weights, once per step:                                     2(d-1)/d·P·g
    ZeRO-2      the gradients are kept partitioned, so they are reduce-
                scattered at every micro-batch; weights all-gathered once:  (a+1)(d-1)/d·P·g
    ZeRO-3      weights all-gathered for forward and again for backward,
                gradients reduce-scattered, at every micro-batch:           3a(d-1)/d·P·g
- Tensor parallelism (t ranks): each layer all-reduces its b·s·h activations twice in forward
  and twice in backward (sequence parallelism swaps each for an all-gather + reduce-scatter:
  the same bytes); full recomputation repeats the forward's two:
    per layer per micro-batch   (4 or 6)·2(t-1)/t·b·s·h·2 bytes
Tensor-parallel traffic stays inside a node (NVLink); data-parallel traffic crosses the
network when the job spans nodes. Times are bytes over bandwidth with no overlap, an upper
bound: DeepSpeed overlaps part of the gradient traffic with backward.
"""

from dataclasses import dataclass


def data_parallel_bytes(params_per_gpu: int, grad_bytes: int, dp: int, zero_stage: int, accumulation: int) -> float:
    """Bytes one GPU sends per step for data parallelism (see the module's table)."""
    if dp == 1:
        return 0.0
    size, share = params_per_gpu * grad_bytes, (dp - 1) / dp
    rounds = {0: 2, 1: 2, 2: accumulation + 1, 3: 3 * accumulation}[zero_stage]
    return rounds * share * size


def tensor_parallel_bytes(micro_batch: int, seq: int, hidden: int, layers: int, tp: int, accumulation: int,
                          checkpointing: str) -> float:
    """Bytes one GPU sends per step for tensor parallelism (16-bit activations)."""
    if tp == 1:
        return 0.0
    collectives = 6 if checkpointing == "full" else 4
    per_layer = collectives * 2 * (tp - 1) / tp * micro_batch * seq * hidden * 2
    return per_layer * layers * accumulation


@dataclass
class Bandwidth:
    nvlink: float = 400e9
    """Bytes/s one GPU moves in a collective inside a node (H100 NVLink 4: ~450 GB/s per direction)."""
    network: float = 50e9
    """Bytes/s per GPU across nodes (one 400 Gb/s InfiniBand NDR port per GPU)."""


def communication_seconds(dp_bytes: float, tp_bytes: float, dp_spans_nodes: bool, bandwidth: Bandwidth) -> dict:
    """Seconds each kind of traffic takes over its link, none of it overlapped."""
    dp_link = bandwidth.network if dp_spans_nodes else bandwidth.nvlink
    return {"data_parallel": dp_bytes / dp_link, "tensor_parallel": tp_bytes / bandwidth.nvlink}
