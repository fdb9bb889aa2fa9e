"""RMSNorm through NVIDIA apex's fused CUDA kernel (apex is optional: built from source or NGC)."""

import torch
from apex.normalization.fused_layer_norm import fused_rms_norm_affine

from pretrain.model.norm import RMSNorm


class ApexRMSNorm(RMSNorm):
    """RMSNorm (same weight, same sequence-parallel flag) computed by apex's fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_rms_norm_affine(x, self.weight, self.weight.shape, self.eps)
