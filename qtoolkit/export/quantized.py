"""Export a torch INT8 model in the ONNX form its quantization method names.

Registry of export forms (a config class names one in ``export_format``): ``qdq`` rebuilds static
and QAT models as QuantizeLinear/DequantizeLinear graphs, ``dynamic`` writes integer MatMuls with
run-time activation quantization. The form is passed in by name, so this stage never imports the
quantize stage's registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from qtoolkit.errors import QtkError

Exporter = Callable[..., dict[str, Any]]
EXPORTERS: dict[str, Exporter] = {}


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    """Decorator: ``exporter(int8_model, example, path, opset, metadata) -> pass counts`` is form ``name``."""

    def decorate(exporter: Exporter) -> Exporter:
        EXPORTERS[name] = exporter
        return exporter

    return decorate


@register_exporter("qdq")
def _export_qdq(
    int8_model: nn.Module, example: Any, path: str | os.PathLike[str], opset: int, metadata: Mapping | None
) -> dict[str, Any]:
    from qtoolkit.export import export_int8_onnx

    return export_int8_onnx(int8_model, example, path, opset=opset)


@register_exporter("dynamic")
def _export_dynamic(
    int8_model: nn.Module, example: Any, path: str | os.PathLike[str], opset: int, metadata: Mapping | None
) -> dict[str, Any]:
    from qtoolkit.export.dynamic_onnx import export_dynamic_int8_onnx

    result = export_dynamic_int8_onnx(int8_model, example, path, opset=opset, metadata=metadata)
    return {"integer_matmuls": len(result.linears), "uint8_embeddings": len(result.embeddings)}


def export_quantized(
    int8_model: nn.Module,
    form: str,
    example_input: Any,
    path: str | os.PathLike[str],
    opset: int,
    metadata: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """Write ``int8_model`` to ``path`` as export ``form`` (a config's ``export_format``); returns
    what the graph passes did. ``metadata`` goes into the ONNX file where the form keeps it."""
    if form not in EXPORTERS:
        raise QtkError(f"no ONNX exporter for form {form!r}; known: {', '.join(EXPORTERS)}")
    return EXPORTERS[form](int8_model, example_input, path, opset, metadata)
