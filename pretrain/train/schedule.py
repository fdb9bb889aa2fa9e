"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""

import math

from pretrain.train.config import OptimConfig


def lr_at(step: int, optim: OptimConfig, train_steps: int) -> float:
    """The learning rate used for optimizer step `step` (0-based)."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    decay_steps = optim.decay_steps or max(train_steps - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.min_lr + (optim.lr - optim.min_lr) * cosine


def lr_multiplier(optim: OptimConfig, train_steps: int):
    """The schedule as torch's LambdaLR wants it: a factor of the peak lr per step.

    A plain function on purpose: LambdaLR saves the attributes of callable objects into its
    state_dict, which would let a checkpoint override the configured schedule on resume.
    """

    def multiplier(step: int) -> float:
        return lr_at(step, optim, train_steps) / optim.lr

    return multiplier
