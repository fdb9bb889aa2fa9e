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


class WarmupCosine:
    """A picklable multiplier for torch's LambdaLR (a lambda would not survive state_dict)."""

    def __init__(self, optim: OptimConfig, train_steps: int):
        self.optim = optim
        self.train_steps = train_steps

    def __call__(self, step: int) -> float:
        return lr_at(step, self.optim, self.train_steps) / self.optim.lr
