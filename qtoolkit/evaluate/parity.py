"""Parity of an exported INT8 ONNX model with the torch INT8 model it came from.

The reference is torch's converted INT8 model, whose kernels run every op the export quantizes.
Where a graph rule quantizes more than torch.ao can run (ops named, as ONNX op types, in the INT8
model's ``qtk_simulated_ops`` attribute), the reference is the QDQ simulation of exactly the
exported graph (:func:`qtoolkit.export.to_reference`). ``reference`` in the result says, per
op kind of the ONNX graph that reads a DequantizeLinear, which of the two it was checked against.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from qtoolkit.evaluate.ort_runtime import make_session
from qtoolkit.export import to_reference

SIMULATED_OPS_ATTR = "qtk_simulated_ops"  # set of ONNX op types torch's INT8 model cannot run in integer
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
    int8_model: nn.Module, onnx_path: str | os.PathLike[str], batches: Iterable[Any], threads: int = 2
) -> dict[str, Any]:
    """Top-1 agreement and max |logit difference| between ``int8_model`` and the ONNX file.

    ``batches`` yields inputs, or (input, label) pairs. Returns ``agreement`` in [0, 1],
    ``max_abs_diff``, ``samples`` and ``reference`` (op kind -> "torch INT8" | "QDQ simulation").
    """
    simulated = set(getattr(int8_model, SIMULATED_OPS_ATTR, ()))
    expected_model = to_reference(int8_model) if simulated else int8_model
    session = make_session(onnx_path, threads)
    name = session.get_inputs()[0].name
    agree, total, max_diff = 0, 0, 0.0
    with torch.no_grad():
        for batch in batches:
            inputs = batch[0] if isinstance(batch, tuple | list) else batch
            expected = expected_model(inputs).numpy()
            got = session.run(None, {name: inputs.numpy()})[0]
            agree += int(np.sum(expected.argmax(-1) == got.argmax(-1)))
            total += len(expected)
            max_diff = max(max_diff, float(np.abs(expected - got).max()))
    return {
        "agreement": agree / max(total, 1),
        "max_abs_diff": max_diff,
        "samples": total,
        "reference": references_by_op(onnx_path, simulated),
    }
