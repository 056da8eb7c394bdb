"""Quantize stage: one verb, ``quantize(model, config, ...)``, over dataclass configs."""

from qtoolkit.quantize.api import QuantizedModel, quantize, register_quantizer
from qtoolkit.quantize.qconfig import ObserverSpec
from qtoolkit.quantize.static import StaticQuantConfig

__all__ = ["ObserverSpec", "QuantizedModel", "StaticQuantConfig", "quantize", "register_quantizer"]
