"""Models by name, torchvision/timm style: ``create_model("resnet18", num_classes=10, in_channels=1)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from qtoolkit.errors import QtkError

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make ``builder(**kwargs) -> nn.Module`` available as ``name``."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with random weights (weights are loaded separately)."""
    if name not in _REGISTRY:
        raise QtkError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as error:
        raise QtkError(f"model {name!r} does not take these options: {error}") from error
