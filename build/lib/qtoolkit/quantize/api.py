"""One verb over dataclass configs: ``quantize(model, StaticQuantConfig(), calibration=...)``.

Each config type has a handler in a registry (no if-chains); handlers return a torch INT8 model
that :func:`qtoolkit.export.export_int8_onnx` can export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.quantize.static import StaticQuantConfig, quantize_static


@dataclass
class QuantizedModel:
    """A converted torch INT8 model and how it was made."""

    int8_model: nn.Module
    method: str  # static | dynamic | qat
    details: dict[str, Any] = field(default_factory=dict)


Handler = Callable[..., QuantizedModel]
_HANDLERS: dict[type, Handler] = {}


def register_quantizer(config_type: type) -> Callable[[Handler], Handler]:
    """Decorator: ``handler(model, config, **inputs) -> QuantizedModel`` serves ``config_type``."""

    def decorate(handler: Handler) -> Handler:
        _HANDLERS[config_type] = handler
        return handler

    return decorate


def quantize(model: nn.Module, config: object, **inputs: Any) -> QuantizedModel:
    """Quantize ``model`` as ``config`` says; ``inputs`` are what that method needs
    (static: ``calibration`` batches and an ``example_input``). ``model`` is not modified."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(t.__name__ for t in _HANDLERS)
        raise QtkError(f"no quantizer for {type(config).__name__}; use one of {known}")
    return handler(model, config, **inputs)


@register_quantizer(StaticQuantConfig)
def _static(
    model: nn.Module, config: StaticQuantConfig, *, calibration: Any, example_input: torch.Tensor
) -> QuantizedModel:
    result = quantize_static(model, config, calibration, example_input)
    details = {
        "mode": result.mode,
        "calibration_batches": result.calibration_batches,
        "float_modules": result.float_modules,
    }
    return QuantizedModel(result.int8_model, "static", details)
