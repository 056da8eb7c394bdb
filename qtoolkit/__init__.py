"""qtoolkit: quantize PyTorch models to deployable INT8 ONNX, and prove they are still accurate.

Python API (the CLI ``qtk`` is a thin layer over it)::

    from qtoolkit import quantize, StaticQuantConfig, export_int8_onnx
    int8 = quantize(model, StaticQuantConfig(), calibration=batches, example_input=x[:1]).int8_model
    export_int8_onnx(int8, x[:1], "model_int8.onnx")
"""

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.parity import check_parity
from qtoolkit.export import export_int8_onnx, export_onnx
from qtoolkit.quantize import ObserverSpec, QuantizedModel, StaticQuantConfig, quantize

__version__ = "0.1.0"

__all__ = [
    "ObserverSpec",
    "QtkError",
    "QuantizedModel",
    "StaticQuantConfig",
    "__version__",
    "check_parity",
    "export_int8_onnx",
    "export_onnx",
    "quantize",
]
