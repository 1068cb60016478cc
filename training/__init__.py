"""The trainer behind train.py: config validation, optimizer, mesh/sharding, steps, checkpoints, metrics."""

from training.config import TrainConfig, default_config, from_config_dict
from training.loop import train_and_evaluate

__all__ = ["TrainConfig", "default_config", "from_config_dict", "train_and_evaluate"]
