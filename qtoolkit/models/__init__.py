"""Model stage: registry of models by name; importing this registers the built-in ones."""

from qtoolkit.models import (
    efficientnet,  # noqa: F401  (registers efficientnet_lite2; packages optional)
    resnet,  # noqa: F401  (registers resnet18, resnet50, mobilenets)
    rnn,  # noqa: F401  (registers lstm-text, gru-text)
)
from qtoolkit.models.registry import available_models, create_model, register_model

__all__ = ["available_models", "create_model", "register_model"]
