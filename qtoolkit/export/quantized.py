"""Export a :class:`~qtoolkit.quantize.QuantizedModel` in the ONNX form its method names.

Registry of export forms (a config class names one in ``export_format``): ``qdq`` rebuilds static
and QAT models as QuantizeLinear/DequantizeLinear graphs, ``dynamic`` writes integer MatMuls with
run-time activation quantization.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from qtoolkit.errors import QtkError
from qtoolkit.quantize.api import QuantizedModel, get_method

Exporter = Callable[[QuantizedModel, Any, "str | os.PathLike[str]", int], dict[str, Any]]
EXPORTERS: dict[str, Exporter] = {}


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    def decorate(exporter: Exporter) -> Exporter:
        EXPORTERS[name] = exporter
        return exporter

    return decorate


@register_exporter("qdq")
def _export_qdq(quantized: QuantizedModel, example: Any, path: str | os.PathLike[str], opset: int) -> dict:
    from qtoolkit.export import export_int8_onnx

    return export_int8_onnx(quantized.int8_model, example, path, opset=opset)


@register_exporter("dynamic")
def _export_dynamic(
    quantized: QuantizedModel, example: Any, path: str | os.PathLike[str], opset: int
) -> dict[str, Any]:
    from qtoolkit.export.dynamic_onnx import export_dynamic_int8_onnx

    result = export_dynamic_int8_onnx(
        quantized.int8_model, example, path, opset=opset, metadata=quantized.details
    )
    return {"integer_matmuls": len(result.linears), "uint8_embeddings": len(result.embeddings)}


def export_quantized(
    quantized: QuantizedModel, example_input: Any, path: str | os.PathLike[str], opset: int
) -> dict[str, Any]:
    """Write ``quantized``'s INT8 model to ``path`` in its method's export form; returns pass counts."""
    form = get_method(quantized.method).export_format
    if form not in EXPORTERS:
        raise QtkError(f"no ONNX exporter for form {form!r} (method {quantized.method!r})")
    return EXPORTERS[form](quantized, example_input, path, opset)
