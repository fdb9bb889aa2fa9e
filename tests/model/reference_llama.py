"""A plain-torch Llama decoder that reads megatron GPTModel's (TP=1) state dict, for parity tests.

Written from the layout facts, not from megatron's code: `linear_qkv.weight` is
[G·(Q/G+2)·d, h] grouped per query group (each group: its Q/G query heads, then k, then v),
`linear_fc1.weight` is [gate; up], RoPE is non-interleaved (rotate-half, as HF Llama).
"""

import torch
import torch.nn.functional as F

from pretrain.model.config import ModelConfig


def tiny(**overrides) -> ModelConfig:
    """The tests' small model: 2 layers, hidden 64, 4 heads in 2 query groups, sequence 32."""
    fields = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                  ffn_hidden_size=176, seq_length=32)
    return ModelConfig(**{**fields, **overrides})


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(x: torch.Tensor, base: float, positions: torch.Tensor | None = None) -> torch.Tensor:
    """x: [b, heads, s, d] rotated by position (positions [b, s]; 0..s-1 when None)."""
    seq, dim = x.shape[-2], x.shape[-1]
    if positions is None:
        positions = torch.arange(seq).expand(x.shape[0], seq)
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = positions.float().unsqueeze(-1) * inv_freq  # [b, s, d/2]
    angles = torch.cat((angles, angles), dim=-1).unsqueeze(1)  # [b, 1, s, d]
    return x * angles.cos() + rotate_half(x) * angles.sin()


def attention(x: torch.Tensor, w: dict, prefix: str, cfg: ModelConfig, positions=None) -> torch.Tensor:
    b, s, _ = x.shape
    heads, groups = cfg.num_attention_heads, cfg.num_query_groups
    d = cfg.hidden_size // heads
    per_group = heads // groups
    qkv = (x @ w[prefix + "linear_qkv.weight"].T).view(b, s, groups, per_group + 2, d)
    q = qkv[:, :, :, :per_group].reshape(b, s, heads, d).transpose(1, 2)   # [b, Q, s, d]
    k = qkv[:, :, :, per_group].transpose(1, 2)                          # [b, G, s, d]
    v = qkv[:, :, :, per_group + 1].transpose(1, 2)
    q, k = rope(q, cfg.rotary_base, positions), rope(k, cfg.rotary_base, positions)
    k = k.repeat_interleave(per_group, dim=1)  # query head i reads group i // per_group
    v = v.repeat_interleave(per_group, dim=1)
    scores = q @ k.transpose(-1, -2) / d**0.5
    future = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(b, s, heads * d)
    return out @ w[prefix + "linear_proj.weight"].T


def swiglu(x: torch.Tensor, w: dict, prefix: str) -> torch.Tensor:
    gate, up = (x @ w[prefix + "linear_fc1.weight"].T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w[prefix + "linear_fc2.weight"].T


def logits(weights: dict, cfg: ModelConfig, input_ids: torch.Tensor, positions=None) -> torch.Tensor:
    """[b, s] token ids -> [b, s, vocab] logits (RoPE at `positions` [b, s], default 0..s-1)."""
    eps = cfg.norm_epsilon
    embedding = weights["embedding.word_embeddings.weight"]
    x = embedding[input_ids]
    for i in range(cfg.num_layers):
        p = f"decoder.layers.{i}."
        x = x + attention(rms_norm(x, weights[p + "input_layernorm.weight"], eps), weights, p + "self_attention.", cfg,
                          positions)
        x = x + swiglu(rms_norm(x, weights[p + "pre_mlp_layernorm.weight"], eps), weights, p + "mlp.")
    x = rms_norm(x, weights["decoder.final_layernorm.weight"], eps)
    return x @ weights.get("output_layer.weight", embedding).T
