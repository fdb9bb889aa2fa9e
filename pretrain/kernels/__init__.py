"""Fused kernels for the decoder, each with a plain torch reference, and the choice among them.

One module per op: rmsnorm, rope, swiglu, cross_entropy (fused output layer + loss). Each
holds `<op>_reference` (plain torch) and the Triton forward + backward. `select_kernels`
turns `model.kernels` into the classes and hooks that pretrain/model/gpt.py puts in the layer
spec, the TransformerConfig and the loss; forwards never branch on it.

The Triton modules are imported only when Triton is chosen: a `@triton.jit` function is bound
to the interpreter or the GPU when it is defined (TRITON_INTERPRET is read at that moment).
"""

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch

from pretrain.errors import ConfigError

KERNEL_CHOICES = ("auto", "triton", "apex", "torch")


@dataclass(frozen=True)
class KernelSet:
    name: str
    """The resolved choice: triton, apex or torch."""
    norm: type
    """RMSNorm class megatron builds for every norm (pre-attention, pre-MLP, final)."""
    mlp: type
    """MLP class: megatron's, or one with the fused SwiGLU."""
    fused_rope: bool
    """Sets megatron's apply_rope_fusion; its fused-RoPE hook then runs the Triton RoPE."""
    output_loss: Callable | None
    """(model, labels, input_ids=, position_ids=, attention_mask=) -> mean loss, or None for megatron's
    logits + CE."""


def resolve(choice: str) -> str:
    """The kernels `choice` means on this host: auto -> triton (CUDA + triton), else apex if installed, else torch."""
    if choice == "auto":
        if torch.cuda.is_available() and _installed("triton"):
            return "triton"
        return "apex" if _installed("apex.normalization") else "torch"
    if choice == "triton":
        if not _installed("triton"):
            raise ConfigError("model.kernels", "triton is not installed; use auto or torch")
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError("model.kernels", "triton kernels need a CUDA GPU here (or TRITON_INTERPRET=1); "
                                               "use auto or torch")
    if choice == "apex" and not _installed("apex.normalization"):
        raise ConfigError("model.kernels", "NVIDIA apex is not installed (it is built from source or comes "
                                           "in NGC containers); use auto, triton or torch")
    return choice


@functools.cache
def select_kernels(choice: str) -> KernelSet:
    """The classes and hooks for model.kernels = choice (resolved for this host)."""
    from megatron.core.transformer.mlp import MLP

    from pretrain.model.norm import RMSNorm

    name = resolve(choice)
    if name == "triton":
        return _triton_kernels()
    if name == "apex":
        from pretrain.kernels.apex_norm import ApexRMSNorm

        return KernelSet("apex", ApexRMSNorm, MLP, fused_rope=False, output_loss=None)
    return KernelSet("torch", RMSNorm, MLP, fused_rope=False, output_loss=None)


def _triton_kernels() -> KernelSet:
    from megatron.core.models.common.embeddings import rope_utils

    from pretrain.kernels.cross_entropy import fused_language_model_loss
    from pretrain.kernels.rmsnorm import TritonRMSNorm
    from pretrain.kernels.rope import rope_triton
    from pretrain.kernels.swiglu import TritonSwiGLUMLP

    # megatron's hook for a fused RoPE: apply_rotary_pos_emb calls this module-level function
    # when config.apply_rope_fusion is set (Transformer Engine's, when TE is installed). Only
    # models whose config sets apply_rope_fusion (ours with kernels=triton) reach it.
    rope_utils.fused_apply_rotary_pos_emb = rope_triton
    return KernelSet("triton", TritonRMSNorm, TritonSwiGLUMLP, fused_rope=True, output_loss=fused_language_model_loss)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
