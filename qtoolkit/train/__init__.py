"""Shared training engine (seeded, resumable, mixed precision) used by QAT and fine-tuning."""

from typing import Any

from qtoolkit.train.engine import (
    Callback,
    TrainConfig,
    TrainResult,
    default_forward_loss,
    fit,
)

__all__ = ["Callback", "TrainConfig", "TrainResult", "default_forward_loss", "evaluate_accuracy", "fit"]


def __getattr__(name: str) -> Any:
    if name == "evaluate_accuracy":  # kept for callers of qtoolkit.train.evaluate_accuracy; loaded on use
        from qtoolkit.evaluate.accuracy import evaluate_accuracy  # layering: public re-export only

        return evaluate_accuracy
    raise AttributeError(f"module 'qtoolkit.train' has no attribute {name!r}")
