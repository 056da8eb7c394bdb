"""One verb over dataclass configs: ``quantize(model, StaticQuantConfig(), calibration=...)``.

One registry of methods, keyed by the method's name (the recipe's ``quantize.method``): each entry
holds the config class, the handler and the ONNX form the INT8 model exports to. ``quantize`` finds
the entry from the config's class (``config.method``), the pipeline from the recipe's name; there is
no second table. Handlers return a torch INT8 model that
:func:`qtoolkit.export.export_int8_onnx` writes in the config's ``export_format``.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.quantize.base import QuantConfig
from qtoolkit.quantize.static import StaticQuantConfig, quantize_static
from qtoolkit.runtime.torch_runner import to_float32


@dataclass
class QuantizedModel:
    """A converted torch INT8 model and how it was made."""

    int8_model: nn.Module
    method: str  # static | dynamic | qat
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def export_format(self) -> str:
        """The ONNX form :func:`qtoolkit.export_int8_onnx` writes (``qdq`` | ``dynamic``)."""
        return get_method(self.method).export_format


Handler = Callable[..., QuantizedModel]


@dataclass(frozen=True)
class Method:
    """A quantization method: its config class, its handler and its export form."""

    name: str
    config_type: type[QuantConfig]
    handler: Handler

    @property
    def export_format(self) -> str:
        return self.config_type.export_format


METHODS: dict[str, Method] = {}


def register_quantizer(config_type: type[QuantConfig]) -> Callable[[Handler], Handler]:
    """Decorator: ``handler(model, config, **inputs) -> QuantizedModel`` serves ``config_type``,
    under the method name ``config_type.method``."""
    if not (isinstance(config_type, type) and issubclass(config_type, QuantConfig) and config_type.method):
        raise TypeError(f"{config_type!r} is not a QuantConfig subclass with a method name")

    def decorate(handler: Handler) -> Handler:
        METHODS[config_type.method] = Method(config_type.method, config_type, handler)
        return handler

    return decorate


def get_method(name: str) -> Method:
    """The registered method ``name``; QtkError listing the others when there is none."""
    if name not in METHODS:
        raise QtkError(f"unknown quantization method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def quantize(model: nn.Module, config: QuantConfig, **inputs: Any) -> QuantizedModel:
    """Quantize ``model`` as ``config`` says; ``inputs`` are what that method needs
    (static: ``calibration`` batches and an ``example_input``). ``model`` is not modified."""
    method = METHODS.get(getattr(config, "method", ""))
    if method is None or not isinstance(config, method.config_type):
        known = ", ".join(m.config_type.__name__ for m in METHODS.values())
        raise QtkError(f"no quantizer for {type(config).__name__}; use one of {known}")
    accepted = [n for n in inspect.signature(method.handler).parameters if n not in ("model", "config")]
    unexpected = sorted(set(inputs) - set(accepted))
    if unexpected:
        takes = ", ".join(accepted) or "no inputs"
        raise QtkError(f"{type(config).__name__} does not take {', '.join(unexpected)} (it takes: {takes})")
    if "example_input" in inputs:
        inputs["example_input"] = to_float32(inputs["example_input"])
    return method.handler(_float32_model(model), config, **inputs)


def _float32_model(model: nn.Module) -> nn.Module:
    """``model`` when its floating weights are float32, else a float32 copy (with a warning): torch's
    INT8 observers and kernels take float32, and the INT8 model is made from the float32 values."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    other = sorted(
        {str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()} - {"float32"}
    )
    if not other:
        return model
    warnings.warn(
        f"the model's weights are {', '.join(other)}: quantizing a float32 copy (torch's INT8 kernels take "
        "float32; your model is unchanged, and the INT8 ONNX model takes float32 inputs)",
        stacklevel=3,
    )
    return copy.deepcopy(model).float()


@register_quantizer(StaticQuantConfig)
def _static(
    model: nn.Module, config: StaticQuantConfig, *, calibration: Any, example_input: Any
) -> QuantizedModel:
    result = quantize_static(model, config, calibration, example_input)
    details = {
        "mode": result.mode,
        "calibration_batches": result.calibration_batches,
        "float_modules": result.float_modules,
        "float_ops": result.float_ops,  # quantized by torch, float between DQ and Q in the ONNX graph
        # depthwise convs whose torch INT8 kernel saturates (parity then uses the exact simulation)
        "torch_saturated_convs": result.saturated,
        # what each post-training algorithm changed (layers equalized, learned-rounded, bias-corrected)
        "algorithms": {
            name.removeprefix("algorithm_"): layers
            for name, layers in result.rules.items()
            if name.startswith("algorithm_")
        },
    }
    return QuantizedModel(result.int8_model, "static", details)
