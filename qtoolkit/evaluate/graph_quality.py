"""What onnxruntime actually runs: op counts of the graph after ORT's optimizer.

A QDQ file says little by itself: speed depends on which DequantizeLinear -> op -> QuantizeLinear
groups ORT fuses into integer kernels (QLinearConv, QLinearConcat, QLinearSigmoid, NhwcMaxPool, …)
and which stay float "islands" (with NCHW<->NHWC Transposes around them, inserted by ORT's layout
transformer). :func:`optimized_op_counts` saves the graph ORT runs
(``SessionOptions.optimized_model_filepath``, with qtoolkit's session options) and counts its ops;
:func:`graph_quality` sums them into the three figures compared with onnxruntime's own quantizer.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import onnx

from qtoolkit.runtime.ort import make_session

# Float ops that do arithmetic: in an INT8 graph each one is a float island (ORT ran it in fp32).
FLOAT_COMPUTE_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "Add", "Sub", "Mul",
     "Div", "Concat", "MaxPool", "AveragePool", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Relu", "Clip",
     "Softmax", "LayerNormalization", "Gelu", "Erf", "QuickGelu"}
)  # fmt: skip
LAYOUT_OPS = frozenset({"Transpose", "ReorderInput", "ReorderOutput"})


def optimized_op_counts(onnx_path: str | os.PathLike[str], threads: int = 1) -> dict[str, int]:
    """Op type -> count in the graph ORT runs for ``onnx_path`` (qtoolkit's session options)."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        make_session(onnx_path, threads, optimized_model_path=optimized)
        graph = onnx.load(str(optimized), load_external_data=False).graph
        return dict(sorted(Counter(node.op_type for node in graph.node).items()))


def graph_quality(counts: dict[str, int]) -> dict[str, int]:
    """Float compute ops, DequantizeLinear nodes and layout ops of optimized ``counts``."""
    return {
        "float_ops": sum(n for op, n in counts.items() if op in FLOAT_COMPUTE_OPS),
        "dequantize": counts.get("DequantizeLinear", 0),
        "layout": sum(n for op, n in counts.items() if op in LAYOUT_OPS),
    }


def float_op_names(counts: dict[str, int]) -> dict[str, int]:
    """The float compute ops of optimized ``counts`` (op type -> count)."""
    return {op: n for op, n in counts.items() if op in FLOAT_COMPUTE_OPS}
