"""Parameter and FLOP arithmetic from the model config alone: no torch, so login nodes and
`pretrain plan` can use it. `pretrain.model.gpt` re-exports these for the trainer.
"""

from pretrain.model.config import ModelConfig


def head_dim(cfg: ModelConfig) -> int:
    return cfg.hidden_size // cfg.num_attention_heads


def attention_parameters(cfg: ModelConfig) -> int:
    """Weights of one layer's qkv and attention output matrices."""
    d = head_dim(cfg)
    qkv = cfg.hidden_size * (cfg.num_attention_heads + 2 * cfg.num_query_groups) * d
    return qkv + cfg.num_attention_heads * d * cfg.hidden_size


def mlp_parameters(cfg: ModelConfig, experts: int | None = None) -> int:
    """Weights of one layer's SwiGLU gate/up/down; with MoE, of `experts` experts (default: all)
    plus the router."""
    if not cfg.moe.enabled:
        return 3 * cfg.hidden_size * cfg.ffn_hidden_size
    return router_parameters(cfg) + expert_parameters(cfg, experts)


def router_parameters(cfg: ModelConfig) -> int:
    """One MoE layer's router (a [experts, hidden] matrix); 0 for a dense model."""
    return cfg.hidden_size * cfg.moe.num_experts if cfg.moe.enabled else 0


def expert_parameters(cfg: ModelConfig, experts: int | None = None) -> int:
    """Weights of `experts` SwiGLU experts of one MoE layer (default: all); 0 for a dense model."""
    if not cfg.moe.enabled:
        return 0
    count = cfg.moe.num_experts if experts is None else experts
    return count * 3 * cfg.hidden_size * (cfg.moe.ffn_hidden_size or cfg.ffn_hidden_size)


def layer_matmul_parameters(cfg: ModelConfig) -> int:
    """Weights of one decoder layer's matrices: qkv, attention output, SwiGLU (every expert)."""
    return attention_parameters(cfg) + mlp_parameters(cfg)


def matmul_parameters(cfg: ModelConfig, vocab_size: int) -> int:
    """Weights that take part in a matrix multiply per token: all layers plus the output layer.
    With MoE, the router and only the router_topk experts a token goes through."""
    active = cfg.moe.router_topk if cfg.moe.enabled else None
    per_layer = attention_parameters(cfg) + mlp_parameters(cfg, active)
    return cfg.num_layers * per_layer + vocab_size * cfg.hidden_size


def total_parameters(cfg: ModelConfig, vocab_size: int) -> int:
    """Every parameter of the model: layers (matrices and two norms each), final norm,
    embedding, and the output layer when it is not tied to the embedding."""
    layers = cfg.num_layers * (layer_matmul_parameters(cfg) + 2 * cfg.hidden_size)
    embeddings = vocab_size * cfg.hidden_size * (2 if cfg.untie_embeddings_and_output_weights else 1)
    return layers + cfg.hidden_size + embeddings


def flops_per_token(cfg: ModelConfig, vocab_size: int) -> float:
    """Training FLOPs per token (forward + backward): 6·N + 12·L·H·S.

    N = matmul_parameters (the input embedding is a lookup, the output layer a matmul, so it
    counts once whether tied or not; norms are negligible). 6·N is 2 FLOPs per weight per
    token forward and 4 backward. The attention term is QK^T and AV: 2·2·S·H per layer per
    token forward, times 3 for training, counted over the full S×S score matrix (causal
    masking is not subtracted), as PaLM and Megatron count it so MFUs compare.
    """
    attention = 12 * cfg.num_layers * cfg.hidden_size * cfg.seq_length
    return 6 * matmul_parameters(cfg, vocab_size) + attention


def padded_vocab_size(vocab_size: int, cfg: ModelConfig, tensor_parallel_size: int) -> int:
    """Round the vocabulary up to a multiple of make_vocab_size_divisible_by * tensor_parallel_size."""
    multiple = cfg.make_vocab_size_divisible_by * tensor_parallel_size
    return -(-vocab_size // multiple) * multiple
