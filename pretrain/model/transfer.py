"""Starting a run from another model: Hugging Face weights (model.init_from) and frozen parts."""

from pathlib import Path

import torch

from pretrain.model.config import ModelConfig


def prepare_model(model: torch.nn.Module, cfg: ModelConfig, padded_vocab: int, tp_size: int, tp_rank: int,
                  run_dir: str | Path, say) -> None:
    """Load init_from on a fresh run, then freeze; call before DeepSpeed builds its optimizer."""
    if cfg.init_from:
        from pretrain.checkpoint import store

        if store.resume_candidates(run_dir):  # what the trainer will resume from, if anything
            say(f"model.init_from={cfg.init_from} not loaded: the run directory has a checkpoint, resuming wins")
        else:
            from pretrain.model.hf import load_into

            load_into(model, cfg, padded_vocab, tp_size, tp_rank)
            say(f"initialized the model from {cfg.init_from}")
    frozen = freeze(model, cfg)
    if frozen:
        say(f"frozen: {frozen} parameters on this rank (embedding: {cfg.freeze_embedding}, "
            f"first {cfg.freeze_layers} layers)")


def frozen_names(cfg: ModelConfig) -> tuple[str, ...]:
    """Name prefixes of the parameters that stay fixed."""
    prefixes = tuple(f"decoder.layers.{i}." for i in range(cfg.freeze_layers))
    return prefixes + (("embedding.",) if cfg.freeze_embedding else ())


def freeze(model: torch.nn.Module, cfg: ModelConfig) -> int:
    """Set requires_grad=False on the frozen parameters; returns how many values were frozen."""
    prefixes, count = frozen_names(cfg), 0
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)
            count += param.numel()
    return count
