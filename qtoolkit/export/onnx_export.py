"""Export a torch module (FP32, or the QDQ reference of an INT8 model) to ONNX with the dynamo exporter."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch
from onnx_ir.passes.common import ClearMetadataAndDocStringPass
from torch import nn

from qtoolkit.atomic import atomic_path
from qtoolkit.errors import QtkError
from qtoolkit.export.qdq_passes import make_ort_friendly

DEFAULT_OPSET = 21  # opset 21 has INT4 QuantizeLinear and per-axis DQ everywhere ORT needs it


def export_onnx(
    module: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "logits",
) -> dict[str, Any]:
    """Export ``module`` called on ``example_input`` to a single-file ONNX model at ``path``.

    The batch dimension is dynamic. QDQ graphs go through :func:`make_ort_friendly`. The file is
    checked with ``onnx.checker`` and written atomically. Returns what the passes changed.
    """
    module = module.eval()
    dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    forward_arg = next(iter(_forward_arg_names(module)), "x")
    if dynamic_shapes is not None:
        dynamic_shapes = {forward_arg: dynamic_shapes["x"]}
    quiet = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(
                module,
                (example_input,),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                input_names=[input_name],
                output_names=[output_name],
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types; keep its first line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QtkError(f"ONNX export of {type(module).__name__} failed: {first_line}") from error
    model: ir.Model = program.model
    changes = make_ort_friendly(model)
    ClearMetadataAndDocStringPass()(model)  # exporter stack traces: debugging aid, not deployment payload
    with atomic_path(path) as tmp:
        ir.save(model, tmp)
        onnx.checker.check_model(str(tmp), full_check=True)
    return changes


def _forward_arg_names(module: nn.Module) -> list[str]:
    import inspect

    return [name for name in inspect.signature(module.forward).parameters if name != "self"]


def onnx_op_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many nodes of each op type the graph at ``path`` has (for reports and tests)."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(Path(path)), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
