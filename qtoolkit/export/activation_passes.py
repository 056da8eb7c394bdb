"""Fixed-grid activations as integer ops that onnxruntime fuses.

HardSigmoid (torch's ``hardsigmoid``, and the gate of Hardswish after
``int8_rules.hardswish_on_int8``) has no integer kernel in onnxruntime: ``DQ → HardSigmoid → Q``
stays a float island (mobilenet_v3_large: 29 of them, as in onnxruntime's own quantizer's file).
On torch's fixed output grid (scale s ≤ 1/255, zero point 0: ``fixed_qparams``) it is an integer Add:

    q = sat(round((α·x + β) / s)) = sat(round((x + β/α) / (s/α)))

because hardsigmoid's clamp to [0, 1] is the uint8 saturation itself (0 ↔ q = 0, and 255·s ≤ 1).
:func:`hardsigmoid_on_integers` writes ``Add(DQ(x), DQ(β/α)) → Q(scale s/α, zero point 0)``: the same
integers torch's kernel writes (up to the rounding of the scale product), which the readers keep
reading with scale s. onnxruntime fuses it into one QLinearAdd.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtoolkit.export.qdq_passes import _const, _dequantize_params, _initializer, _unique


def _fixed_output_scale(q: ir.Node) -> float | None:
    """The scale of a uint8 QuantizeLinear with zero point 0 whose saturation covers [0, 1], or None."""
    scale = _const(q.inputs[1])
    zero = _const(q.inputs[2]) if len(q.inputs) > 2 else None
    if (
        scale is None
        or zero is None
        or scale.size != 1
        or zero.dtype != np.uint8
        or int(zero.reshape(())) != 0
    ):
        return None
    scale_value = float(scale.reshape(()))
    return scale_value if 0 < 255 * scale_value <= 1 + 1e-6 else None


def _constant_through_dq(graph: ir.Graph, value: float, base: str) -> ir.Node:
    """DequantizeLinear of a one-element uint8 constant that reads exactly ``value``."""
    stored, zero = (0, 1) if value < 0 else (int(value > 0), 0)  # 1·v, (0 − 1)·|v|, or 0
    name = _unique(graph, base)
    data = _initializer(graph, name, np.array(stored, dtype=np.uint8))
    scale = _initializer(graph, f"{name}_scale", np.array(abs(value) or 1.0, dtype=np.float32))
    zero_point = _initializer(graph, f"{name}_zero_point", np.array(zero, dtype=np.uint8))
    return ir.node("DequantizeLinear", [data, scale, zero_point], name=f"{name}_dq")


def hardsigmoid_on_integers(model: ir.Model) -> int:
    """Rewrite ``DQ → HardSigmoid → Q`` on a fixed [0, 1] grid into an integer Add (module docstring)."""
    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx"):
            continue
        alpha, beta = node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)
        x_params = _dequantize_params(node.inputs[0])
        consumers = list(node.outputs[0].consumers())
        if alpha <= 0 or x_params is None or x_params[0].size != 1 or node.outputs[0].is_graph_output():
            continue
        if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
            continue
        q = consumers[0]
        scale = _fixed_output_scale(q)
        if scale is None:
            continue
        offset = _constant_through_dq(graph, beta / alpha, f"{node.name}_offset")
        add = ir.node("Add", [node.inputs[0], offset.outputs[0]], name=_unique(graph, f"{node.name}_as_add"))
        new_scale = _initializer(
            graph, _unique(graph, f"{node.name}_add_scale"), np.array(scale / alpha, np.float32)
        )
        graph.insert_before(node, [offset, add])
        q.replace_input_with(0, add.outputs[0])
        q.replace_input_with(1, new_scale)
        graph.remove(node, safe=True)
        count += 1
    return count
