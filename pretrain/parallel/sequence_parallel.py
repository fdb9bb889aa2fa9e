"""Sum the gradients of sequence-parallel replicated weights over the tensor-parallel group.

Under megatron's sequence parallelism each TP rank runs the norms on its own slice of the
sequence, so a replicated weight (the norms' gains, flagged `sequence_parallel=True` by the
layer spec) gets only its slice's share of the gradient on each rank. megatron sums those
shares in `finalize_model_grads`, which belongs to its own DDP wrapper; here DeepSpeed owns
data parallelism and the optimizer, so the sum is done by a hook instead.

The hook is a tensor hook on the parameter: it runs on each incoming gradient before
autograd accumulates it into `.grad`, so it comes before every hook DeepSpeed registers
(those run after accumulation, ZeRO 2/3 reducing and freeing the gradient there). That makes
it correct for ZeRO 0-3 and for gradient accumulation alike (a sum of sums).
"""

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def sequence_parallel_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters whose gradient is split along the sequence over the TP group."""
    return [p for p in model.parameters() if p.requires_grad and getattr(p, "sequence_parallel", False)]


def register_sequence_parallel_grad_hooks(model: torch.nn.Module) -> int:
    """Make each sequence-parallel parameter's gradient the TP-group sum; returns how many."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return 0
    params = sequence_parallel_params(model)
    for param in params:
        param.register_hook(_sum_over_tensor_parallel_group)
    return len(params)


def _sum_over_tensor_parallel_group(grad: torch.Tensor) -> torch.Tensor:
    grad = grad.clone()  # autograd may share the incoming buffer with other consumers
    dist.all_reduce(grad, group=parallel_state.get_tensor_model_parallel_group())
    return grad
