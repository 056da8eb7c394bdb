"""qtoolkit: quantize PyTorch models to deployable INT8 ONNX, and prove they are still accurate.

Python API (the CLI ``qtk`` is a thin layer over it)::

    from qtoolkit import quantize_model, StaticQuantConfig, export_int8_onnx
    int8 = quantize_model(model, StaticQuantConfig(), calibration=batches, example_input=x[:1]).int8_model
    export_int8_onnx(int8, x[:1], "model_int8.onnx")

The public names load on first use (module ``__getattr__``): ``import qtoolkit.deploy`` and
``qtk predict`` need only onnxruntime, tokenizers and numpy, never torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qtoolkit.errors import QtkError

__version__ = "0.1.0"

# public name -> (module, attribute); imported when first asked for
_LAZY: dict[str, tuple[str, str]] = {
    "check_parity": ("qtoolkit.evaluate.parity", "check_parity"),
    "export_int8_onnx": ("qtoolkit.export", "export_int8_onnx"),
    "export_onnx": ("qtoolkit.export", "export_onnx"),
    "DynamicQuantConfig": ("qtoolkit.quantize", "DynamicQuantConfig"),
    "ObserverSpec": ("qtoolkit.quantize", "ObserverSpec"),
    "QATConfig": ("qtoolkit.quantize", "QATConfig"),
    "QuantizedModel": ("qtoolkit.quantize", "QuantizedModel"),
    "StaticQuantConfig": ("qtoolkit.quantize", "StaticQuantConfig"),
    "quantize_model": ("qtoolkit.quantize", "quantize"),  # not `quantize`: that name is the stage package
}

__all__ = [
    "DynamicQuantConfig",
    "ObserverSpec",
    "QATConfig",
    "QtkError",
    "QuantizedModel",
    "StaticQuantConfig",
    "__version__",
    "check_parity",
    "export_int8_onnx",
    "export_onnx",
    "quantize_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'qtoolkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from qtoolkit.evaluate.parity import check_parity
    from qtoolkit.export import export_int8_onnx, export_onnx
    from qtoolkit.quantize import (
        DynamicQuantConfig,
        ObserverSpec,
        QATConfig,
        QuantizedModel,
        StaticQuantConfig,
    )
    from qtoolkit.quantize import quantize as quantize_model
