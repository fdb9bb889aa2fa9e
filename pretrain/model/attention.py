"""Core attention modules for megatron's layer spec: torch SDPA and flash-attn.

Each takes the constructor megatron uses for its `core_attention` submodule and the same
forward: query [sq, b, heads, d], key/value [sk, b, groups, d] (grouped-query attention:
`groups` key/value heads, each shared by heads/groups consecutive query heads), an optional
boolean mask that is True where a query must not look, and returns [sq, b, heads * d].
megatron's unfused DotProductAttention stays available as the `local` reference.

Attention dropout is refused rather than supported: it would need megatron's RNG tracker
fork around it (a graph break for torch.compile), and the models here train without it.
"""

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from pretrain.model.backends import resolve_attention
from pretrain.model.config import ModelConfig


class _CoreAttention(MegatronModule):
    """The constructor megatron's SelfAttention calls `core_attention` with."""

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type=None, pg_collection=None, **unused):
        super().__init__(config=config)
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError(f"{type(self).__name__} does not implement attention dropout ({dropout})")
        if config.context_parallel_size != 1:
            raise ValueError(f"{type(self).__name__} does not implement context parallelism")
        self.causal = attn_mask_type == AttnMaskType.causal
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)


class SDPAttention(_CoreAttention):
    """torch.nn.functional.scaled_dot_product_attention: flash or memory-efficient kernels on a
    GPU when no mask is given, a fused CPU kernel here; a mask (document masking) is honoured."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, heads, s, d]
        if attention_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.softmax_scale,
                                                 enable_gqa=True)
        else:
            # The kernels that take a mask on a GPU (memory-efficient) do not take grouped key/value
            # heads, so they are repeated here: query head i reads group i // (heads / groups).
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
            # megatron's mask is True where masked; SDPA's is True where attended.
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=~attention_mask, scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3).flatten(2)  # [sq, b, heads * d]


class FlashAttention(_CoreAttention):
    """flash-attn 2's kernel (CUDA only); causal, no mask."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from flash_attn import flash_attn_func

        self.flash_attn_func = flash_attn_func

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        q, k, v = (x.transpose(0, 1) for x in (query, key, value))  # [b, s, heads, d]; GQA native
        out = self.flash_attn_func(q, k, v, softmax_scale=self.softmax_scale, causal=self.causal)
        return out.transpose(0, 1).flatten(2)


def _transformer_engine_attention():
    from megatron.core.extensions.transformer_engine import TEDotProductAttention

    return TEDotProductAttention


def core_attention_module(cfg: ModelConfig) -> type:
    """The class megatron's layer spec gets as `core_attention` for `model.attention`."""
    backend = resolve_attention(cfg, torch.cuda.is_available())
    if backend == "te":
        return _transformer_engine_attention()
    return {"sdpa": SDPAttention, "flash": FlashAttention, "local": DotProductAttention}[backend]
