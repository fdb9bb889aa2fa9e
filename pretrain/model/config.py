"""Configuration of the Llama-style decoder built as megatron-core's GPTModel."""

from dataclasses import dataclass, field

from pretrain.errors import ConfigError, check_choice, check_positive

ATTENTION_BACKENDS = ("auto", "sdpa", "flash", "te", "local")
DOCUMENT_MASKING = ("none", "reset_position_ids", "block_causal")
ACTIVATION_CHECKPOINTING = ("none", "selective", "full")
TOKEN_DISPATCHERS = ("alltoall", "allgather")


@dataclass
class MoEConfig:
    """megatron-core mixture of experts in every layer's MLP; num_experts=0 keeps the dense MLP."""

    num_experts: int = 0
    """Experts per layer; 0 means a dense model."""
    router_topk: int = 2
    """Experts each token is routed to."""
    aux_loss_coeff: float = 1e-2
    """Weight of the load-balancing auxiliary loss added to the training loss."""
    capacity_factor: float | None = None
    """Tokens an expert takes, as a multiple of its even share; extra tokens are dropped. null: no dropping."""
    token_dispatcher: str = "alltoall"
    """How tokens reach their experts across expert-parallel ranks: alltoall or allgather."""
    ffn_hidden_size: int = 0
    """Width of each expert's SwiGLU MLP; 0 means model.ffn_hidden_size."""

    def __post_init__(self):
        check_positive("model.moe.num_experts", self.num_experts, allow_zero=True)
        check_positive("model.moe.router_topk", self.router_topk)
        check_positive("model.moe.aux_loss_coeff", self.aux_loss_coeff, allow_zero=True)
        check_positive("model.moe.ffn_hidden_size", self.ffn_hidden_size, allow_zero=True)
        if self.capacity_factor is not None:
            check_positive("model.moe.capacity_factor", self.capacity_factor)
        check_choice("model.moe.token_dispatcher", self.token_dispatcher, TOKEN_DISPATCHERS)
        if self.num_experts and self.router_topk > self.num_experts:
            raise ConfigError("model.moe.router_topk",
                              f"{self.router_topk} is more than num_experts={self.num_experts}")

    @property
    def enabled(self) -> bool:
        return self.num_experts > 0


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Preset name, for logs and run cards."""
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: int = 2
    """Key/value heads (grouped-query attention); equal to num_attention_heads for plain MHA."""
    ffn_hidden_size: int = 176
    """Width of the SwiGLU MLP (each of gate and up)."""
    seq_length: int = 256
    """Tokens per sample; must equal the dataset's sequence_length."""
    vocab_size: int = 0
    """0 means: take it from the tokenizer card, padded to make_vocab_size_divisible_by."""
    make_vocab_size_divisible_by: int = 128
    rotary_base: int = 10000
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    untie_embeddings_and_output_weights: bool = True
    init_from: str = ""
    """A Hugging Face Llama directory (config.json + safetensors) whose weights a new run starts
    from; ignored when the run directory already has a checkpoint (resume wins)."""
    freeze_embedding: bool = False
    """Keep the input embedding fixed (with tied weights, the output layer too)."""
    freeze_layers: int = 0
    """Keep the first N decoder layers fixed (transfer learning)."""
    kernels: str = "auto"
    """Fused kernels: auto (triton on a CUDA GPU, else apex's RMSNorm if installed, else torch), triton, apex, torch."""
    attention: str = "auto"
    """Core attention: sdpa (torch scaled_dot_product_attention), flash (flash-attn), te
    (Transformer Engine), local (megatron's unfused reference), auto (flash on a GPU with
    flash-attn installed, else sdpa)."""
    document_masking: str = "none"
    """Packed documents (split at eos): none; reset_position_ids (RoPE positions restart at each
    document); block_causal (tokens attend only within their document, as if run alone)."""
    activation_checkpointing: str = "none"
    """Recompute in backward instead of storing: none; selective (core attention); full (every layer)."""
    compile: bool = False
    """torch.compile the model (one graph at tensor_parallel_size=1; compile time at start-up)."""
    moe: MoEConfig = field(default_factory=MoEConfig)
    """Mixture of experts; off unless moe.num_experts > 0."""

    def __post_init__(self):
        for key in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                    "ffn_hidden_size", "seq_length", "make_vocab_size_divisible_by"):
            check_positive(f"model.{key}", getattr(self, key))
        check_positive("model.vocab_size", self.vocab_size, allow_zero=True)
        check_choice("model.kernels", self.kernels, ("auto", "triton", "apex", "torch"))
        check_choice("model.attention", self.attention, ATTENTION_BACKENDS)
        check_choice("model.document_masking", self.document_masking, DOCUMENT_MASKING)
        check_choice("model.activation_checkpointing", self.activation_checkpointing, ACTIVATION_CHECKPOINTING)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("model.hidden_size",
                              f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError("model.num_query_groups",
                              f"{self.num_query_groups} does not divide num_attention_heads={self.num_attention_heads}")
        if not 0 <= self.freeze_layers <= self.num_layers:
            raise ConfigError("model.freeze_layers",
                              f"{self.freeze_layers} is not in [0, num_layers={self.num_layers}]")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ConfigError("model.hidden_size", "the head dimension must be even for rotary embeddings")
