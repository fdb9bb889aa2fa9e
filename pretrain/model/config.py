"""Configuration of the Llama-style decoder built as megatron-core's GPTModel."""

from dataclasses import dataclass

from pretrain.errors import ConfigError, check_choice, check_positive


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

    def __post_init__(self):
        for key in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                    "ffn_hidden_size", "seq_length", "make_vocab_size_divisible_by"):
            check_positive(f"model.{key}", getattr(self, key))
        check_positive("model.vocab_size", self.vocab_size, allow_zero=True)
        check_choice("model.kernels", self.kernels, ("auto", "triton", "apex", "torch"))
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
