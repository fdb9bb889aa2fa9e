"""The baseline of the GPU throughput benchmark: the same Llama architecture in plain PyTorch.

What a careful engineer writes without a framework: torch SDPA (flash / memory-efficient
kernels), torch's fused RMSNorm, bf16 autocast, fused AdamW. Same shapes and FLOPs as our
GPTModel for a ModelConfig (GQA, SwiGLU, RoPE, untied output layer).
"""

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.config import ModelConfig


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.groups = cfg.num_attention_heads, cfg.num_query_groups
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.norm_epsilon
        self.attn_norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.mlp_norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.qkv = nn.Linear(cfg.hidden_size, (self.heads + 2 * self.groups) * self.head_dim, bias=False)
        self.proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)
        self.fc1 = nn.Linear(cfg.hidden_size, 2 * cfg.ffn_hidden_size, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (x.shape[-1],), self.attn_norm, self.eps)).split(
            [self.heads * self.head_dim, self.groups * self.head_dim, self.groups * self.head_dim], dim=-1)
        q = q.view(b, s, self.heads, self.head_dim).transpose(1, 2)   # [b, heads, s, d]
        k = k.view(b, s, self.groups, self.head_dim).transpose(1, 2)  # [b, groups, s, d]
        v = v.view(b, s, self.groups, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.proj(out.transpose(1, 2).reshape(b, s, -1))
        gate, up = self.fc1(F.rms_norm(x, (x.shape[-1],), self.mlp_norm, self.eps)).chunk(2, dim=-1)
        return x + self.fc2(F.silu(gate) * up)


class PlainLlama(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.output = nn.Linear(cfg.hidden_size, vocab_size, bias=False)

    def rope(self, seq: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.cfg.hidden_size // self.cfg.num_attention_heads
        inv_freq = 1.0 / self.cfg.rotary_base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
        angles = torch.outer(torch.arange(seq, device=device, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of tokens [b, s + 1]."""
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        cos, sin = self.rope(inputs.shape[1], tokens.device)
        x = self.embedding(inputs)
        for block in self.blocks:
            x = block(x, cos, sin)
        x = F.rms_norm(x, (x.shape[-1],), self.final_norm, self.cfg.norm_epsilon)
        return F.cross_entropy(self.output(x).flatten(0, 1).float(), labels.flatten())
