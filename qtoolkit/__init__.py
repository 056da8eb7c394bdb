"""qtoolkit: quantize PyTorch models to deployable INT8 ONNX, and prove they are still accurate.

Python API (the CLI ``qtk`` is a thin layer over it)::

    from qtoolkit import quantize_model, StaticQuantConfig, export_int8_onnx
    int8 = quantize_model(model, StaticQuantConfig(), calibration=batches, example_input=x[:1]).int8_model
    export_int8_onnx(int8, x[:1], "model_int8.onnx")
"""

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.parity import check_parity
from qtoolkit.export import export_int8_onnx, export_onnx
from qtoolkit.quantize import (
    DynamicQuantConfig,
    ObserverSpec,
    QATConfig,
    QuantizedModel,
    StaticQuantConfig,
)
from qtoolkit.quantize import quantize as quantize_model  # not `quantize`: that name is the stage package

__version__ = "0.1.0"

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
