"""What onnxruntime actually runs: op counts of the graph after ORT's optimizer.

A QDQ file says little by itself: speed depends on which DequantizeLinear -> op -> QuantizeLinear
groups ORT fuses into integer kernels (QLinearConv, QLinearConcat, QLinearSigmoid, NhwcMaxPool, …)
and which stay float "islands" (with NCHW<->NHWC Transposes around them, inserted by ORT's layout
transformer). :func:`optimized_op_counts` saves the graph ORT runs
(``SessionOptions.optimized_model_filepath``, with qtoolkit's session options) and counts its ops,
those of subgraphs (Scan/Loop/If bodies) included;
:func:`graph_quality` sums them into the three figures compared with onnxruntime's own quantizer.
A Clip/Relu/MaxPool that reads an integer tensor (a ReLU applied to uint8 at its zero point, as
densenet's stem keeps it) is integer work and is counted as ``"Clip(int)"`` etc., not as a float op.
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
# Float compute ops that onnxruntime also runs on uint8/int8 tensors (then they are integer work).
_INTEGER_CAPABLE_OPS = frozenset({"Clip", "Relu", "MaxPool"})
# Ops whose output has their (first) input's element type.
_TYPE_KEEPING_OPS = frozenset(
    {"Clip", "Relu", "MaxPool", "NhwcMaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
     "Identity", "Slice", "Split", "Gather", "Concat"}
)  # fmt: skip
_INTEGER_TYPES = frozenset(
    {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.INT32, onnx.TensorProto.INT64}
)


def _integer_values(graph: onnx.GraphProto) -> set[str]:
    """Names of the tensors of ``graph`` known to be integer: integer initializers and inputs, the
    outputs of quantizing ops (QuantizeLinear, DynamicQuantizeLinear, QLinear*, QGemm), and what
    type-keeping ops (reshapes, Clip, MaxPool, …) make of them. Graph order is topological."""
    known = {t.name for t in graph.initializer if t.data_type in _INTEGER_TYPES}
    known |= {v.name for v in graph.input if v.type.tensor_type.elem_type in _INTEGER_TYPES}
    for node in graph.node:
        op = node.op_type
        if op in ("QuantizeLinear", "QGemm") or op.startswith("QLinear"):
            known.update(node.output[:1])
        elif op == "DynamicQuantizeLinear":
            known.update(node.output[0:1])
            known.update(node.output[2:3])
        elif op in _TYPE_KEEPING_OPS and node.input and node.input[0] in known:
            known.update(node.output)
    return known


def optimized_op_counts(onnx_path: str | os.PathLike[str], threads: int = 1) -> dict[str, int]:
    """Op type -> count in the graph ORT runs for ``onnx_path`` (qtoolkit's session options); a
    float-capable op on an integer tensor is counted as ``"<op>(int)"``."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        make_session(onnx_path, threads, optimized_model_path=optimized)
        graph = onnx.load(str(optimized), load_external_data=False).graph
    return dict(sorted(_op_kinds(graph).items()))


def _op_kinds(graph: onnx.GraphProto) -> Counter[str]:
    """Op kinds of ``graph`` and of the subgraphs its nodes run (a GRU's Scan body runs its
    recurrent integer GEMM and gates at every step: they count as ops of the model)."""
    integer = _integer_values(graph)
    kinds: Counter[str] = Counter()
    for node in graph.node:
        integer_input = node.op_type in _INTEGER_CAPABLE_OPS and node.input[0] in integer
        kinds[f"{node.op_type}(int)" if integer_input else node.op_type] += 1
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                kinds += _op_kinds(body)
    return kinds


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
