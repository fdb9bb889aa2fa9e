"""Configuration of metric logging: stdout, metrics.jsonl and Weights & Biases."""

from dataclasses import dataclass, field

from pretrain.errors import check_choice


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "pretrain"
    entity: str | None = None
    group: str | None = None
    """W&B run group; `pretrain submit -m` puts a sweep's points in one (default: the sweep's directory name)."""
    mode: str = "offline"
    """offline, online or disabled. The WANDB_MODE environment variable wins over this."""

    def __post_init__(self):
        check_choice("logging.wandb.mode", self.mode, ("offline", "online", "disabled"))


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
