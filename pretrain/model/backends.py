"""Which core-attention backend a config gets: resolved once, before any model is built.

Kept free of torch and megatron imports at module level: the CLI checks the choice before it
launches workers, and `auto` only needs to know what is installed.
"""

import importlib.util

from pretrain.errors import ConfigError
from pretrain.model.config import ModelConfig

# Backends that take megatron's dense boolean mask, so block-causal document masking works.
# flash-attn takes only its own causal flag here, and Transformer Engine wants packed
# sequences (megatron's THD format), which this trainer does not build.
BLOCK_CAUSAL_BACKENDS = ("sdpa", "local")


def installed(package: str) -> bool:
    """Whether `package` can be imported, without importing it."""
    return importlib.util.find_spec(package) is not None


def resolve_attention(cfg: ModelConfig, cuda: bool) -> str:
    """The backend `model.attention` means on this host: auto picks flash-attn on a GPU where it is
    installed and the masking allows it, else torch SDPA."""
    if cfg.attention != "auto":
        return cfg.attention
    if cuda and installed("flash_attn") and cfg.document_masking != "block_causal":
        return "flash"
    return "sdpa"


def check_attention(cfg: ModelConfig, cuda: bool) -> str:
    """Raise ConfigError unless the chosen backend is installed and usable here; returns it."""
    backend = resolve_attention(cfg, cuda)
    needs = {"flash": "flash_attn", "te": "transformer_engine"}
    if backend in needs and not (cuda and installed(needs[backend])):
        raise ConfigError("model.attention", f"{backend} needs a CUDA GPU and the {needs[backend]} package; "
                          "use sdpa or auto")
    return backend
