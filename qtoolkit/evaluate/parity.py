"""Parity of an exported INT8 ONNX model with the torch INT8 model it came from.

The reference is torch's converted INT8 model, whose kernels run every op the export quantizes.
Where a graph rule quantizes more than torch.ao can run, or torch's own kernel does not compute the
INT8 math (a depthwise conv whose int16 pair sums saturate: quantize/kernel_check.py), the ops are
named, as ONNX op types, in the INT8 model's ``qtk_simulated_ops`` attribute and the reference is
the QDQ simulation of exactly the exported graph (:func:`qtoolkit.export.to_reference`).
``reference`` in the result says, per
op kind of the ONNX graph that reads a DequantizeLinear, which of the two it was checked against.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import onnx
import torch
from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.metrics import agreement, max_abs_diff, predictions
from qtoolkit.export import to_reference
from qtoolkit.quantize.kernel_check import SIMULATED_OPS_ATTR  # ONNX op types checked on the simulation
from qtoolkit.runtime.batches import collect_logits
from qtoolkit.runtime.onnx_runtimes import DEFAULT_RUNTIME, load_onnx
from qtoolkit.runtime.torch_runner import to_float32, torch_runner

TORCH_INT8, SIMULATION = "torch INT8", "QDQ simulation"
# Layout-only ops: nothing to check beyond their neighbours.
_LAYOUT_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
     "Shape", "Gather", "Slice", "Expand", "Identity"}
)  # fmt: skip


def references_by_op(onnx_path: str | os.PathLike[str], simulated: Iterable[str] = ()) -> dict[str, str]:
    """ONNX op type -> reference it is checked against, for every op that reads a DequantizeLinear."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    kinds = {n.op_type for n in graph.node if n.op_type not in _LAYOUT_OPS and dequantized & set(n.input)}
    simulated = set(simulated)
    return {kind: SIMULATION if kind in simulated else TORCH_INT8 for kind in sorted(kinds)}


def check_parity(
    int8_model: nn.Module,
    onnx_path: str | os.PathLike[str],
    batches: Iterable[Any],
    threads: int = 2,
    runtime: str = DEFAULT_RUNTIME,
    strict_fp32: bool = False,
) -> dict[str, Any]:
    """Top-1 agreement and max |logit difference| between ``int8_model`` (what ``quantize_model``
    returned, or its ``int8_model``) and the ONNX file.

    ``batches`` yields model inputs — a tensor, a tuple of tensors (positional inputs, in the ONNX
    model's input order) or a mapping of named tensors — or inputs with their label, ``(inputs,
    label)`` (see :func:`qtoolkit.runtime.batches.split_batch`). Returns ``agreement`` in [0, 1],
    ``max_abs_diff``, ``samples``, ``reference`` (op kind -> "torch INT8" | "QDQ simulation") and
    ``runtime`` (the ONNX runtime's name, version, settings and precision; see
    :func:`qtoolkit.runtime.onnx_runtimes.load_onnx`).
    """
    if isinstance(getattr(int8_model, "int8_model", None), nn.Module):  # a QuantizedModel, as export takes
        int8_model = int8_model.int8_model
    if not isinstance(int8_model, nn.Module):
        raise QtkError(
            f"check_parity takes a QuantizedModel or a torch INT8 module, not {type(int8_model).__name__}."
        )
    if isinstance(batches, torch.Tensor | dict):  # one batch given, not an iterable of batches
        batches = [batches]
    batches = map(to_float32, batches)  # both sides take float32 (half-precision batches are cast)
    simulated = set(getattr(int8_model, SIMULATED_OPS_ATTR, ()))
    expected_model = to_reference(int8_model) if simulated else int8_model
    model = load_onnx(onnx_path, runtime, threads, strict_fp32)
    runs = {"torch": torch_runner(expected_model), "onnx": model.run}
    logits = collect_logits(runs, batches, arity=len(model.input_names), desc="parity", progress=False).logits
    expected, got = logits["torch"], logits["onnx"]
    return {
        "agreement": agreement(predictions(expected), predictions(got)),
        "max_abs_diff": max_abs_diff(expected, got),
        "samples": len(expected),
        "reference": references_by_op(onnx_path, simulated),
        "runtime": model.info,
    }
