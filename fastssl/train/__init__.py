"""The training engine: config, loop, checkpoints, distributed set-up, optimizers and schedules."""

from fastssl.train.config import TrainConfig
from fastssl.train.engine import NonFiniteLossError, Trainer

__all__ = ["NonFiniteLossError", "TrainConfig", "Trainer"]
