"""Export stage: FP32 and INT8 (QDQ) ONNX from torch models."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from qtoolkit.export.onnx_export import DEFAULT_OPSET, export_onnx, onnx_op_counts
from qtoolkit.export.reference import to_reference


def export_int8_onnx(
    int8_model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Export torch's converted INT8 model as a QDQ ONNX graph with INT8 weight initializers."""
    return export_onnx(to_reference(int8_model), example_input, path, opset=opset)


__all__ = ["DEFAULT_OPSET", "export_int8_onnx", "export_onnx", "onnx_op_counts", "to_reference"]
