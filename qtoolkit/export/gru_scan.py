"""A dynamic-INT8 GRU layer as ONNX: integer input projection + a Scan with an integer recurrence.

onnxruntime has no integer GRU kernel (its ``quantize_dynamic`` leaves GRU float). One layer with D
directions becomes (math in :mod:`qtoolkit.export.recurrent_passes`)::

    P   = MatMul(X, [W_ih,0ᵀ | W_ih,1ᵀ]) + [b_ih,0 | b_ih,1]     one integer GEMM, all steps, both directions
    Y_d, h_d = Scan_d(h0_d, P_d[r|z], P_d[n])                      integer W_hh · h_{t−1} per step
    Y   = Concat(Y_d[:, None]) [seq, D, batch, H],   Y_h = Concat(h_d[None]) [D, batch, H]

The projection is written as a float MatMul and handed to
:func:`~qtoolkit.export.dynamic_passes.quantize_linear_matmuls`, so it gets exactly the Linear
path's integer arithmetic (and ORT's DynamicQuantizeMatMul fusion). The reverse direction scans
backwards (``scan_input_directions`` / ``scan_output_directions`` = 1), so its outputs stay aligned
with time as in torch.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtoolkit.export.dynamic_passes import (
    LinearQuant,
    _const,
    _quantize_activation,
    _unique,
    quantize_linear_matmuls,
)
from qtoolkit.export.recurrent_passes import RecurrentQuant, _dequantize

__all__ = ["build_gru"]

FLOAT = ir.DataType.FLOAT


def _stacked_projection(spec: RecurrentQuant) -> LinearQuant:
    """Both directions' W_ih as one int8 [D·3H, in] weight with per-row scales and zero points."""
    quants = [d.w_ih for d in spec.directions]
    rows = quants[0].weight_q.shape[0]

    def per_row(array: np.ndarray) -> np.ndarray:
        return array if array.ndim else np.full(rows, array, dtype=array.dtype)

    scale = np.concatenate([per_row(q.scale) for q in quants]).astype(np.float32)
    zero = np.concatenate([per_row(q.zero_point) for q in quants]).astype(np.int8)
    if len(quants) == 1 and not quants[0].scale.ndim:  # keep a per-tensor weight per tensor
        scale, zero = quants[0].scale, quants[0].zero_point
    return LinearQuant(np.concatenate([q.weight_q for q in quants]), scale, zero, quants[0].reduce_range)


def _body(spec: RecurrentQuant, direction: int, tag: str) -> ir.Graph:
    """Scan body: (h_{t−1}, P_rz,t, P_n,t) → (h_t, h_t) with the integer recurrent GEMM.

    Written with as few nodes as the math allows (Scan runs each node once per step, and at small
    hidden sizes the per-node cost, not the GEMM, sets the speed): r and z share one Add and one
    Sigmoid, and P arrives already split into its r|z and n parts.
    """
    hidden = spec.hidden_size
    part = spec.directions[direction]
    h_prev = ir.Value(name=f"{tag}/h_prev", type=ir.TensorType(FLOAT), shape=ir.Shape([None, hidden]))
    p_rz = ir.Value(name=f"{tag}/p_rz", type=ir.TensorType(FLOAT), shape=ir.Shape([None, 2 * hidden]))
    p_n = ir.Value(name=f"{tag}/p_n", type=ir.TensorType(FLOAT), shape=ir.Shape([None, hidden]))
    body = ir.Graph([h_prev, p_rz, p_n], [], nodes=[], name=f"{tag}/body")
    nodes, (hq, hs, hz) = _quantize_activation(body, h_prev, part.w_hh.reduce_range, f"{tag}/h")
    wq = _const(body, f"{tag}.w_hh_quantized", np.ascontiguousarray(part.w_hh.weight_q.T))
    ws = _const(body, f"{tag}.w_hh_scale", part.w_hh.scale.astype(np.float32))
    bias = _const(body, f"{tag}.b_hh", part.b_hh)
    mm_inputs = [hq, wq, hz]
    if np.any(part.w_hh.zero_point != 0):
        mm_inputs.append(_const(body, f"{tag}.w_hh_zero_point", part.w_hh.zero_point))

    def add(op: str, *inputs: ir.Value, outputs: int = 1, **attributes: object) -> ir.Node:
        node = ir.node(
            op, list(inputs), attributes or None, num_outputs=outputs, name=f"{tag}/{op}_{len(nodes)}"
        )
        nodes.append(node)
        return node

    def one(op: str, *inputs: ir.Value, **attributes: object) -> ir.Value:
        return add(op, *inputs, **attributes).outputs[0]

    both = one("Mul", hs, ws)
    gates_h = one("Add", one("Mul", one("Cast", one("MatMulInteger", *mm_inputs), to=FLOAT), both), bias)
    sizes = _const(body, f"{tag}.split_rz_n", np.array([2 * hidden, hidden], np.int64))
    g_rz, g_n = add("Split", gates_h, sizes, outputs=2, axis=-1).outputs
    reset, update = add(
        "Split", one("Sigmoid", one("Add", p_rz, g_rz)), outputs=2, axis=-1, num_outputs=2
    ).outputs
    candidate = one("Tanh", one("Add", p_n, one("Mul", reset, g_n)))
    h_new = one("Add", candidate, one("Mul", update, one("Sub", h_prev, candidate)))  # (1−z)·n + z·h
    out = one("Identity", h_new)  # the state and the scan output must be distinct values
    for node in nodes:
        body.append(node)
        for index, value in enumerate(node.outputs):  # the body names values val_N, like the main graph
            value.name = f"{node.name}:{index}"
    body.outputs.extend([h_new, out])
    return body


def build_gru(model: ir.Model, node: ir.Node, spec: RecurrentQuant) -> list[ir.Value]:
    """Insert the integer GRU for ``node`` before it; return values standing for its outputs."""
    graph = model.graph
    tag = spec.name
    directions = len(spec.directions)
    x, initial_h = node.inputs[0], node.inputs[1]
    new: list[ir.Node] = []

    def add(
        op: str, inputs: list[ir.Value | None], attributes: dict | None = None, outputs: int = 1
    ) -> ir.Node:
        made = ir.node(op, inputs, attributes, num_outputs=outputs, name=f"{tag}/{op}_{len(new)}")
        new.append(made)
        return made

    # the input projection as a float MatMul that the Linear pass turns into integer arithmetic
    projection = _stacked_projection(spec)
    weight_name = _unique(graph, f"{tag}.w_ih.weight_t")
    weight = _const(graph, weight_name, np.ascontiguousarray(_dequantize(projection).T))
    bias = _const(graph, _unique(graph, f"{tag}.b_ih"), np.concatenate([d.b_ih for d in spec.directions]))
    projected = add("Add", [add("MatMul", [x, weight]).outputs[0], bias]).outputs[0]
    # per direction its r|z and n columns, so that the body needs no Split of P
    hidden = spec.hidden_size
    sizes = _ints(graph, tag, [2 * hidden, hidden] * directions)[0]
    parts = add("Split", [projected, sizes], {"axis": -1}, 2 * directions).outputs
    ys, hs = [], []
    for d in range(directions):
        h0 = add("Gather", [initial_h, _ints(graph, tag, d)[0]], {"axis": 0}).outputs[0]
        scan = add(
            "Scan",
            [h0, parts[2 * d], parts[2 * d + 1]],
            {
                "body": _body(spec, d, f"{tag}.d{d}"),
                "num_scan_inputs": 2,
                "scan_input_directions": [d, d],
                "scan_output_directions": [d],
            },
            outputs=2,
        )
        axes = _ints(graph, tag, [1])[0], _ints(graph, tag, [0])[0]
        ys.append(add("Unsqueeze", [scan.outputs[1], axes[0]]).outputs[0])
        hs.append(add("Unsqueeze", [scan.outputs[0], axes[1]]).outputs[0])
    y = ys[0] if directions == 1 else add("Concat", ys, {"axis": 1}).outputs[0]
    y_h = hs[0] if directions == 1 else add("Concat", hs, {"axis": 0}).outputs[0]
    graph.insert_before(node, new)
    quantize_linear_matmuls(model, {weight_name: projection})
    return [y, y_h][: len(node.outputs)]


def _ints(graph: ir.Graph, tag: str, *values: object) -> list[ir.Value]:
    """int64 constants (one initializer per value)."""
    return [_const(graph, _unique(graph, f"{tag}.const"), np.array(v, np.int64)) for v in values]
