"""Quantize stage: one verb, ``quantize(model, config, ...)``, over dataclass configs."""

from qtoolkit.quantize import qat_method  # noqa: F401  (registers the QATConfig handler)
from qtoolkit.quantize.api import QuantizedModel, quantize, register_quantizer
from qtoolkit.quantize.dynamic import DynamicQuantConfig
from qtoolkit.quantize.qat import QATConfig
from qtoolkit.quantize.qconfig import ObserverSpec
from qtoolkit.quantize.static import StaticQuantConfig

__all__ = [
    "DynamicQuantConfig",
    "ObserverSpec",
    "QATConfig",
    "QuantizedModel",
    "StaticQuantConfig",
    "quantize",
    "register_quantizer",
]
