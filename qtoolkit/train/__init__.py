"""Shared training engine (seeded, resumable, mixed precision) used by QAT and fine-tuning."""

from qtoolkit.train.engine import (
    Callback,
    TrainConfig,
    TrainResult,
    default_forward_loss,
    fit,
)

__all__ = ["Callback", "TrainConfig", "TrainResult", "default_forward_loss", "fit"]
