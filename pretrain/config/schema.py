"""The whole run's configuration: one dataclass per component, composed by Hydra."""

from dataclasses import dataclass, field

from pretrain.data.config import DataConfig
from pretrain.launch.config import ClusterConfig
from pretrain.model.config import ModelConfig
from pretrain.monitor.config import LoggingConfig
from pretrain.parallel.config import ParallelConfig
from pretrain.train.config import OptimConfig, TrainConfig


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
