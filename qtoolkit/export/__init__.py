"""Export stage: FP32 and INT8 ONNX from torch models.

One verb for INT8, :func:`export_int8_onnx`, whatever ``quantize_model`` made: static and QAT models
become QDQ graphs (:mod:`qtoolkit.export.reference`), dynamic ones integer MatMuls, uint8 embeddings,
``DynamicQuantizeLSTM`` and integer GRUs (:mod:`qtoolkit.export.dynamic_onnx`). The exporter is
looked up in one registry by export form (``qdq`` | ``dynamic``): a ``QuantizedModel`` names its form
(``export_format``, from its config class), a bare torch INT8 module is inspected. The form is passed
by name, so this stage never imports the quantize stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.export import float_ops  # noqa: F401  (registers float references: LayerNorm, BN, softmax)
from qtoolkit.export.onnx_export import DEFAULT_OPSET, ExampleInput, export_onnx, onnx_op_counts
from qtoolkit.export.reference import to_reference
from qtoolkit.runtime.torch_runner import to_float32

Exporter = Callable[[nn.Module, ExampleInput, "str | os.PathLike[str]", int, dict[str, Any]], Any]
_EXPORTERS: dict[str, Exporter] = {}


def register_exporter(form: str) -> Callable[[Exporter], Exporter]:
    """Decorator: ``exporter(int8_model, example_inputs, path, opset, details)`` writes ``form``."""

    def decorate(exporter: Exporter) -> Exporter:
        _EXPORTERS[form] = exporter
        return exporter

    return decorate


def quantization_method(int8_model: nn.Module) -> str:
    """Export form of a bare torch INT8 module: 'dynamic' when it holds torch.ao dynamic modules
    (Linear, LSTM/GRU, weight-only Embedding), 'qdq' (static, QAT) when it holds other quantized
    modules; QtkError when it holds none."""
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.quantized import dynamic as nnqd

    modules = list(int8_model.modules())
    dynamic = (nnqd.Linear, nnqd.modules.rnn.RNNBase, nnq.Embedding, nnq.EmbeddingBag)
    if any(isinstance(m, dynamic) for m in modules):
        return "dynamic"
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in modules):
        return "qdq"
    raise QtkError(
        f"{type(int8_model).__name__} has no quantized module; quantize it first: "
        "qtoolkit.quantize_model(model, StaticQuantConfig() / DynamicQuantConfig() / QATConfig())."
    )


def export_int8_onnx(
    quantized: Any,
    example_inputs: ExampleInput | tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
) -> Any:
    """Export what ``quantize_model`` returned (a ``QuantizedModel``) or its ``int8_model`` to one
    INT8 ONNX file.

    ``example_inputs``: a tensor, a tuple (positional arguments of ``forward``) or a dict (keyword
    arguments). Batch axes are dynamic, and for dynamic models the sequence axes of token ids and 3-D
    inputs too. Returns the exporter's summary: for static/QAT the dict of graph-pass changes, for
    dynamic a :class:`~qtoolkit.export.dynamic_onnx.DynamicExportResult`. Nothing is written on error.
    """
    if isinstance(getattr(quantized, "int8_model", None), nn.Module):  # a QuantizedModel
        model, form, details = quantized.int8_model, quantized.export_format, quantized.details
    elif isinstance(quantized, nn.Module):
        model, details = quantized, {}
        form = quantization_method(model)
    else:
        raise QtkError(
            f"export_int8_onnx takes a QuantizedModel or a torch INT8 module, not {type(quantized).__name__}."
        )
    exporter = _EXPORTERS.get(form)
    if exporter is None:
        raise QtkError(f"no INT8 exporter for form {form!r}; known: {', '.join(sorted(_EXPORTERS))}")
    # the INT8 model takes float32 (a half-precision example from a half model's pipeline is cast)
    return exporter(model, to_float32(example_inputs), path, opset, details)


def export_summary(result: Any) -> dict[str, Any]:
    """What an export changed, as JSON-able counts for reports (either exporter's return value)."""
    if isinstance(result, dict):
        return result
    return {"integer_matmuls": len(result.linears), "uint8_embeddings": len(result.embeddings),
            "recurrent": len(getattr(result, "recurrent", ()))}  # fmt: skip


@register_exporter("qdq")
def _export_qdq(
    model: nn.Module, inputs: ExampleInput, path: Any, opset: int, details: dict
) -> dict[str, Any]:
    """Static and QAT: torch's converted modules → QDQ reference → ORT-friendly QDQ graph."""
    return export_onnx(to_reference(model), inputs, path, opset=opset)


@register_exporter("dynamic")
def _export_dynamic(model: nn.Module, inputs: ExampleInput, path: Any, opset: int, details: dict) -> Any:
    from qtoolkit.export.dynamic_onnx import export_dynamic_int8_onnx

    return export_dynamic_int8_onnx(model, inputs, path, opset=opset, metadata=details or None)


__all__ = [
    "DEFAULT_OPSET",
    "export_int8_onnx",
    "export_onnx",
    "export_summary",
    "onnx_op_counts",
    "quantization_method",
    "register_exporter",
    "to_reference",
]
