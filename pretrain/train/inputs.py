"""Checks of the training inputs that need neither torch nor a process group."""

from pretrain.config import Config
from pretrain.data.manifest import load_manifest
from pretrain.errors import ConfigError
from pretrain.tokenizers.tokenizer import Tokenizer


def check_device(cfg: Config) -> None:
    """fp16 needs a GPU (DeepSpeed refuses it on the CPU accelerator, deep inside initialize), and so
    do the flash and te attention backends and the triton kernels; apex must be installed to be chosen."""
    import torch

    if cfg.train.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision", "fp16 needs a CUDA GPU; use bf16 or fp32 on this machine")
    from pretrain.kernels import resolve
    from pretrain.model.backends import check_attention

    resolve(cfg.model.kernels)  # kernels=apex without apex, or triton without a GPU: one line here

    check_attention(cfg.model, torch.cuda.is_available())  # flash-attn / Transformer Engine installed


def check_inputs(cfg: Config) -> Tokenizer:
    """The tokenizer and dataset must exist and belong together; returns the tokenizer."""
    tokenizer = Tokenizer(cfg.data.tokenizer_dir)
    manifest = load_manifest(cfg.data.dataset_dir)
    if manifest["tokenizer_sha256"] != tokenizer.sha256:
        raise ConfigError("data.dataset_dir", f"{cfg.data.dataset_dir} was tokenized with another tokenizer "
                          f"than {cfg.data.tokenizer_dir}; run `pretrain data shard` again")
    if manifest["sequence_length"] != cfg.model.seq_length:
        raise ConfigError("model.seq_length", f"{cfg.model.seq_length} differs from the dataset's "
                          f"sequence_length={manifest['sequence_length']} in {cfg.data.dataset_dir}")
    if cfg.model.vocab_size and cfg.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError("model.vocab_size",
                          f"{cfg.model.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}")
    return tokenizer
