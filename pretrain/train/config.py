"""Configuration of the optimizer, the schedule and the training loop."""

from dataclasses import dataclass, field

from pretrain.checkpoint.config import CheckpointConfig
from pretrain.errors import ConfigError, check_choice, check_positive


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 1e-4
    """Floor of the cosine decay."""
    warmup_steps: int = 10
    decay_steps: int = 0
    """Steps of cosine decay after warmup; 0 means until train.train_steps."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices only (not norms, not biases)."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Global gradient-norm clipping; 0 turns it off."""

    def __post_init__(self):
        check_positive("optim.lr", self.lr)
        check_positive("optim.min_lr", self.min_lr, allow_zero=True)
        if self.min_lr > self.lr:
            raise ConfigError("optim.min_lr", f"{self.min_lr} is larger than optim.lr={self.lr}")
        for key in ("warmup_steps", "decay_steps", "weight_decay", "eps", "grad_clip"):
            check_positive(f"optim.{key}", getattr(self, key), allow_zero=True)
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"optim.{key}", "must be in [0, 1)")


@dataclass
class GuardConfig:
    nonfinite_patience: int = 3
    """Non-finite steps in a row (each one's update skipped) before `on_nonfinite` acts."""
    on_nonfinite: str = "rollback"
    """rollback: reload the last checkpoint and skip the data since; stop: exit (code 3)."""
    max_rollbacks: int = 3
    """Rollbacks in one run before the guard stops instead (the run keeps diverging)."""
    spike_window: int = 100
    """Trailing steps whose losses give the mean and spread a loss spike is measured against; 0: no spike guard."""
    spike_z: float = 6.0
    """A step's loss this many standard deviations above the trailing mean is a spike."""
    spike_min_steps: int = 50
    """Losses in the window before the spike guard acts (early losses fall too fast to judge by)."""
    spike_action: str = "skip"
    """skip: do not apply the spiking batch's update; warn: apply it and only log the spike."""
    spike_patience: int = 3
    """Spikes in a row before `on_nonfinite` (rollback or stop) acts."""

    def __post_init__(self):
        check_positive("train.guard.nonfinite_patience", self.nonfinite_patience)
        check_positive("train.guard.max_rollbacks", self.max_rollbacks, allow_zero=True)
        check_choice("train.guard.on_nonfinite", self.on_nonfinite, ("rollback", "stop"))
        check_positive("train.guard.spike_window", self.spike_window, allow_zero=True)
        check_positive("train.guard.spike_z", self.spike_z)
        check_positive("train.guard.spike_patience", self.spike_patience)
        check_choice("train.guard.spike_action", self.spike_action, ("skip", "warn"))
        if self.spike_window and not 2 <= self.spike_min_steps <= self.spike_window:
            raise ConfigError("train.guard.spike_min_steps",
                              f"must be between 2 and train.guard.spike_window={self.spike_window}, "
                              f"got {self.spike_min_steps}")


@dataclass
class TrainConfig:
    run_dir: str = "runs/${model.name}"
    """The run's directory: config, checkpoints, metrics, W&B files. An existing one is resumed."""
    train_steps: int = 100
    """Optimizer steps to train for (the run ends at this step, across restarts)."""
    micro_batch_size: int = 4
    """Samples per process per forward/backward."""
    global_batch_size: int = 16
    """Samples per optimizer step over all data-parallel ranks (with gradient accumulation)."""
    precision: str = "fp32"
    """fp32, bf16 or fp16 (fp16 needs a GPU)."""
    seed: int = 1234
    log_interval: int = 10
    """Steps between metric logs (stdout, metrics.jsonl, W&B)."""
    eval_interval: int = 50
    """Steps between validation losses; 0 turns validation off. Also run at the start and the end."""
    eval_samples: int = 64
    """Validation samples per evaluation (the first ones of the valid split; the same set for any layout)."""
    save_interval: int = 50
    """Steps between checkpoints; a checkpoint is also written at the end."""
    log_sample_ids: bool = False
    """Record every step's sample ids per rank in run_dir/samples/ (an audit of the data order)."""
    step_timeout: int = 1800
    """Seconds a rank may go without finishing a step (checkpoints and validation included)
    before it ends the job naming itself; 0 turns the watchdog off."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    sample_prompts: list[str] = field(default_factory=list)
    """Prompts to continue with the trained model at the end (printed by rank 0)."""
    sample_tokens: int = 48
    """Tokens to generate per prompt."""
    peak_flops: float = 0.0
    """Peak FLOP/s of one device, for the logged mfu; 0: looked up from the GPU's name
    (pretrain/monitor/mfu.py), and no mfu where unknown (the CPU)."""

    def __post_init__(self):
        for key in ("train_steps", "micro_batch_size", "global_batch_size", "log_interval", "eval_samples"):
            check_positive(f"train.{key}", getattr(self, key))
        for key in ("eval_interval", "save_interval", "sample_tokens", "step_timeout", "peak_flops"):
            check_positive(f"train.{key}", getattr(self, key), allow_zero=True)
        check_choice("train.precision", self.precision, ("fp32", "bf16", "fp16"))
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError("train.global_batch_size",
                              f"{self.global_batch_size} is not divisible by "
                              f"train.micro_batch_size={self.micro_batch_size}")
