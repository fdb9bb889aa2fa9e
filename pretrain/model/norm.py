"""RMSNorm in plain torch, built the way megatron-core builds its norms.

megatron's local layer spec picks apex's FusedLayerNorm when apex imports and torch's
RMSNorm otherwise, and the torch wrapper refuses sequence parallelism. This module works
the same on every install and supports sequence parallelism (see `sequence_parallel` below).
The fused versions (pretrain/kernels: Triton, apex) subclass it and replace only `forward`,
so they keep its weight and flag; `model.kernels` picks one in the layer spec.
"""

import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, computed in fp32 and cast back to x's dtype."""
    x_fp32 = x.float()
    normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight.float()).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learned per-channel weight (initialized to ones)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **unused):
        # megatron passes (config=, hidden_size=, eps=) as keywords; extra keywords vary by version.
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Under sequence parallelism each TP rank normalizes a different slice of the sequence,
        # so this replicated weight's gradient must be summed over the TP group; megatron's
        # finalize_model_grads (or our trainer) does that for parameters carrying this flag.
        self.weight.sequence_parallel = bool(config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
