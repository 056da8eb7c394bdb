"""Quantize stage: one verb, ``quantize(model, config, ...)``, over dataclass configs."""

from qtoolkit.quantize.adaround import AdaRoundConfig
from qtoolkit.quantize.api import METHODS, QuantizedModel, get_method, quantize, register_quantizer
from qtoolkit.quantize.base import QuantConfig
from qtoolkit.quantize.dynamic import DynamicQuantConfig  # registers "dynamic"
from qtoolkit.quantize.qat import QATConfig  # registers "qat"
from qtoolkit.quantize.qconfig import ObserverSpec
from qtoolkit.quantize.static import StaticQuantConfig

__all__ = [
    "METHODS",
    "AdaRoundConfig",
    "DynamicQuantConfig",
    "ObserverSpec",
    "QATConfig",
    "QuantConfig",
    "QuantizedModel",
    "StaticQuantConfig",
    "get_method",
    "quantize",
    "register_quantizer",
]
