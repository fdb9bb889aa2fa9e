"""Configuration of monitoring: stdout, metrics.jsonl, Weights & Biases, stragglers, evaluators."""

from dataclasses import dataclass, field

from pretrain.errors import ConfigError, check_choice, check_positive


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "pretrain"
    entity: str | None = None
    group: str | None = None
    """W&B run group; `pretrain submit -m` puts a sweep's points in one (default: the sweep's directory name)."""
    name: str | None = None
    """Run name shown in W&B (default: the run directory's name)."""
    tags: list[str] = field(default_factory=list)
    """Extra tags; the git commit, Slurm job id, node count and GPU type are always added."""
    mode: str = "auto"
    """auto (online when an API key is configured: WANDB_API_KEY or `wandb login`; else offline),
    offline, online or disabled. The WANDB_MODE environment variable wins over this."""

    def __post_init__(self):
        check_choice("logging.wandb.mode", self.mode, ("auto", "offline", "online", "disabled"))


@dataclass
class StragglerConfig:
    interval: int = 50
    """Steps between comparisons of the ranks' step times; 0 turns detection off."""
    margin: float = 0.2
    """A rank is slow when its data wait + forward time exceeds the median by this fraction."""
    checks: int = 3
    """Slow comparisons in a row before the rank is reported."""

    def __post_init__(self):
        check_positive("logging.stragglers.interval", self.interval, allow_zero=True)
        check_positive("logging.stragglers.margin", self.margin)
        check_positive("logging.stragglers.checks", self.checks)


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    stragglers: StragglerConfig = field(default_factory=StragglerConfig)
    evaluators: list[str] = field(default_factory=list)
    """Extra evaluations run with validation, as "package.module:factory"; each factory is called
    with (config, tokenizer) and returns an Evaluator (see pretrain/monitor/evaluators.py)."""

    def __post_init__(self):
        for target in self.evaluators:
            module, _, attribute = target.partition(":")
            if not module or not attribute:
                raise ConfigError("logging.evaluators", f"{target!r} is not of the form package.module:factory")
