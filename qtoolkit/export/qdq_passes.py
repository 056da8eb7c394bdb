"""Graph passes that make an exported QDQ graph one that onnxruntime fuses into integer kernels.

ORT's QDQ transformers turn ``DQ -> op -> Q`` groups into QLinearConv, QGemm, QLinearAdd, ... only
when *every* input of the op comes from a DequantizeLinear (bias included, as int32) and the
output goes to a QuantizeLinear. torch's INT8 model satisfies this implicitly; the float
reference does not, so:

* ``quantize_bias``: a float bias of Conv/Gemm becomes an int32 initializer with
  scale = s_input * s_weight (per output channel), zero point 0, read through DequantizeLinear.
  (torch's fbgemm adds the float bias after requantizing; rounding it to s_input * s_weight
  moves the output by far less than one output LSB.)
* ``drop_redundant_clips``: a Clip/Relu reading a DequantizeLinear whose whole representable range
  [(qmin − zp)·s, (qmax − zp)·s] already lies inside the clip bounds is the identity (torch's INT8
  ReLU6 after a conv whose output qparams were clamp-aware is exactly this); removing it lets
  the next op read the DequantizeLinear directly.
* ``requantize_passthrough``: ops that keep the integer grid of their input (MaxPool, reshapes,
  average pools, whose torch INT8 kernels round back onto the input's grid) get a Q/DQ pair with
  the input's qparams on their output, so the next op again sees a DequantizeLinear.

Both passes use onnx_ir and change only the graph given to them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

# Ops whose INT8 version keeps the input's (scale, zero point); see module docstring.
PASSTHROUGH_OPS = frozenset(
    {"MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Reshape", "Flatten", "Squeeze",
     "Unsqueeze", "Transpose"}
)  # fmt: skip
_WEIGHTED_OPS = {"Conv": 2, "Gemm": 2}  # op -> index of the bias input


def _const(value: ir.Value | None) -> np.ndarray | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return None if tensor is None else tensor.numpy()


def _dequantize_params(value: ir.Value | None) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(scale, zero_point, axis) when ``value`` is produced by a DequantizeLinear with constant params."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    scale, zero_point = _const(node.inputs[1]), _const(node.inputs[2] if len(node.inputs) > 2 else None)
    if scale is None:
        return None
    if zero_point is None:
        zero_point = np.zeros_like(scale, dtype=np.uint8)
    axis_attr = node.attributes.get("axis")
    return scale, zero_point, axis_attr.as_int() if axis_attr is not None else 1


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def _unique(graph: ir.Graph, base: str) -> str:
    names = set(graph.initializers) | {v.name for n in graph for v in n.outputs}
    name, index = base, 0
    while name in names:
        index += 1
        name = f"{base}_{index}"
    return name


def quantize_bias(model: ir.Model) -> int:
    """Replace float biases of Conv/Gemm fed by DQ input and DQ weight with int32 DQ biases."""
    graph, count = model.graph, 0
    for node in list(graph):
        bias_index = _WEIGHTED_OPS.get(node.op_type)
        if bias_index is None or len(node.inputs) <= bias_index or node.inputs[bias_index] is None:
            continue
        bias_value = node.inputs[bias_index]
        bias = _const(bias_value)
        x_params, w_params = _dequantize_params(node.inputs[0]), _dequantize_params(node.inputs[1])
        if bias is None or bias_value.producer() is not None or x_params is None or w_params is None:
            continue
        if node.op_type == "Gemm" and node.attributes.get("transB", ir.AttrInt64("transB", 0)).as_int() != 1:
            continue  # weight layout unknown: per-channel scales would not line up with the bias
        if x_params[0].size != 1:
            continue
        scale = (x_params[0].reshape(()) * w_params[0]).astype(np.float32).reshape(-1)
        if scale.size not in (1, bias.size):
            continue
        int_bias = np.clip(np.rint(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        name = _unique(graph, f"{bias_value.name}_int32")
        q_bias = _initializer(graph, name, int_bias)
        q_scale = _initializer(graph, f"{name}_scale", scale if scale.size > 1 else scale.reshape(()))
        zero = np.zeros(scale.shape if scale.size > 1 else (), dtype=np.int32)
        q_zero = _initializer(graph, f"{name}_zero_point", zero)
        dq = ir.node("DequantizeLinear", [q_bias, q_scale, q_zero], {"axis": 0}, name=f"{name}_dq")
        graph.insert_before(node, dq)
        node.replace_input_with(bias_index, dq.outputs[0])
        count += 1
    return count


_CLIP_OPS = {"Clip": None, "Relu": (0.0, np.inf)}  # op -> fixed bounds (None: read min/max inputs)
_INT_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def insert_reader(graph: ir.Graph, after: ir.Node, node: ir.Node) -> None:
    """Insert ``node``, which reads ``after``'s first output, right after it, and move every other
    reader of that output onto ``node``'s output (a new op spliced into an edge)."""
    value = after.outputs[0]
    users = [user for user in value.consumers() if user is not node]
    graph.insert_after(after, node)
    for user in users:
        for index, source in enumerate(user.inputs):
            if source is value:
                user.replace_input_with(index, node.outputs[0])


def _clip_bounds(node: ir.Node) -> tuple[float, float] | None:
    fixed = _CLIP_OPS[node.op_type]
    if fixed is not None:
        return fixed
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        value = node.inputs[index] if len(node.inputs) > index else None
        const = _const(value) if value is not None else None
        if value is not None and const is None:
            return None
        bounds.append(default if const is None else float(const.reshape(())))
    return bounds[0], bounds[1]


def drop_redundant_clips(model: ir.Model) -> int:
    """Remove Clip/Relu that cannot change a dequantized input (see module docstring)."""
    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type not in _CLIP_OPS or node.domain not in ("", "ai.onnx"):
            continue
        params, bounds = _dequantize_params(node.inputs[0]), _clip_bounds(node)
        if params is None or bounds is None or params[0].size != 1 or node.outputs[0].is_graph_output():
            continue
        scale, zero_point = float(params[0].reshape(())), params[1]
        qmin, qmax = _INT_RANGES.get(zero_point.dtype, (None, None))
        if qmin is None:
            continue
        zp, eps = int(zero_point.reshape(())), 0.5 * scale
        if (qmin - zp) * scale < bounds[0] - eps or (qmax - zp) * scale > bounds[1] + eps:
            continue
        node.outputs[0].replace_all_uses_with(node.inputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count


def _same_grid(a: ir.Node, b: ir.Node) -> bool:
    """Whether Q/DQ nodes ``a`` and ``b`` have equal constant scale and zero point."""
    pairs = [(_const(a.inputs[i]), _const(b.inputs[i])) for i in (1, 2)]
    return all(x is not None and y is not None and np.array_equal(x, y) for x, y in pairs)


def _past_max_pools(q: ir.Node) -> ir.Node:
    """The last QuantizeLinear of ``q → DQ → MaxPool → Q → …`` chains on ``q``'s grid (or ``q``)."""
    while True:
        chain, value = [], q.outputs[0]
        for op in ("DequantizeLinear", "MaxPool", "QuantizeLinear"):
            consumers = list(value.consumers())
            if len(consumers) != 1 or consumers[0].op_type != op or value.is_graph_output():
                return q
            chain.append(consumers[0])
            value = consumers[0].outputs[0]
        if len(chain[1].outputs) != 1 or not (_same_grid(q, chain[0]) and _same_grid(q, chain[2])):
            return q
        q = chain[2]


def relu_on_integers(model: ir.Model) -> int:
    """Move a ReLU that feeds a QuantizeLinear with zero point above qmin onto the integers.

    ``Q(relu(x)) = max(Q(x), zp)`` exactly (rounding is monotone and ``Q(0) = zp``), so
    ``op → Relu → Q`` becomes ``op → Q → Clip(min=zp)`` on the uint8/int8 tensor. onnxruntime
    drops a ReLU before Q only when zp is qmin; otherwise the ReLU kept the op float (densenet's
    stem conv, whose ReLU output shares the first dense block's concatenation grid) and the
    MaxPool after it too. After the move ``DQ → Conv → Q`` fuses into a QLinearConv. The Clip goes
    past ``DQ → MaxPool → Q`` steps on the same grid (max commutes with max), so onnxruntime fuses
    the pool too (NhwcMaxPool) and the Clip runs on the smaller pooled tensor.
    """
    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type != "Relu" or node.domain not in ("", "ai.onnx") or node.outputs[0].is_graph_output():
            continue
        consumers = list(node.outputs[0].consumers())
        if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
            continue
        q = consumers[0]
        zero_point = _const(q.inputs[2] if len(q.inputs) > 2 else None)
        if zero_point is None or zero_point.size != 1 or zero_point.dtype not in (np.uint8, np.int8):
            continue
        if (
            int(zero_point.reshape(())) == _INT_RANGES[np.dtype(zero_point.dtype)][0]
            or q.outputs[0].is_graph_output()
        ):
            continue  # zp = qmin: onnxruntime already drops the ReLU
        q.replace_input_with(0, node.inputs[0])
        graph.remove(node, safe=True)
        last = _past_max_pools(q)
        clip = ir.node("Clip", [last.outputs[0], q.inputs[2]], name=_unique(graph, f"{last.name}_relu"))
        clip.outputs[0].shape, clip.outputs[0].type = last.outputs[0].shape, last.outputs[0].type
        insert_reader(graph, last, clip)
        count += 1
    return count


def requantize_output(graph: ir.Graph, node: ir.Node, output: ir.Value, dq_source: ir.Node) -> bool:
    """Put ``output`` of ``node`` on the grid of DequantizeLinear ``dq_source`` (a Q/DQ pair with its
    scale and zero point) unless nothing reads it, it is a graph output or only QuantizeLinear reads it."""
    consumers = list(output.consumers())
    if not consumers or output.is_graph_output() or all(c.op_type == "QuantizeLinear" for c in consumers):
        return False
    scale_value, zero_value = dq_source.inputs[1], dq_source.inputs[2]
    q = ir.node(
        "QuantizeLinear", [output, scale_value, zero_value], name=_unique(graph, f"{output.name}_grid_q")
    )
    dq = ir.node("DequantizeLinear", [q.outputs[0], scale_value, zero_value], name=f"{q.name}_dq")
    graph.insert_after(node, [q, dq])
    for consumer in consumers:
        for index, value in enumerate(consumer.inputs):
            if value is output:
                consumer.replace_input_with(index, dq.outputs[0])
    return True


def requantize_passthrough(model: ir.Model) -> int:
    """Give grid-preserving ops a Q/DQ (input qparams) on their output when nothing quantizes it."""
    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type not in PASSTHROUGH_OPS or not node.outputs:
            continue
        params = _dequantize_params(node.inputs[0])
        if params is None or params[0].size != 1:
            continue
        count += requantize_output(graph, node, node.outputs[0], node.inputs[0].producer())
    return count


# Linear on ≥3-D activations as QGemm (linear_passes): one integer kernel with a uint8 output instead of
# MatMulIntegerToFloat's float output + float bias Add + QuantizeLinear (4x the bytes moved): vit_b_16
# on/off 0.975x b1, 0.937x b8 on onnxruntime (`python bench/export_pass_ab.py vit_b_16`), faster on
# OpenVINO too; off only for A/B runs.
LINEAR_TO_GEMM = True
# Linear read only by float ops (GELU, LayerNorm) as MatMulIntegerToFloat with a float output (linear_passes):
# `bench/export_pass_ab.py convnext_tiny --pass linear_float_output` on/off 0.90x b1, 0.85x b8; off only for A/B runs.
LINEAR_FLOAT_OUTPUT = True


def make_ort_friendly(model: ir.Model) -> dict[str, int]:
    """Run every pass; return how many places each one changed (recorded in the export log)."""
    from qtoolkit.export.activation_passes import hardsigmoid_on_integers
    from qtoolkit.export.grid_passes import (  # imports us
        drop_output_round_trip,
        fold_scale_into_dequantize,
        requantize_grid_ops,
        select_on_integers,
        spatial_means_as_global_pools,
    )
    from qtoolkit.export.linear_passes import linear_to_float_output, linear_to_gemm, unshare_weights

    changes = {
        "unshared_weights": unshare_weights(model),
        "dropped_clips": drop_redundant_clips(model),
        "requantized_passthrough": requantize_passthrough(model),
        "requantized_grid_ops": requantize_grid_ops(model),
        "means_as_global_pools": spatial_means_as_global_pools(model),
        "selects_on_integers": select_on_integers(model),
        "scales_folded_into_dequantize": fold_scale_into_dequantize(model),
        "hardsigmoids_as_integer_adds": hardsigmoid_on_integers(model),
        # after the grid passes: its input may be a reshape's
        "linear_float_outputs": linear_to_float_output(model) if LINEAR_FLOAT_OUTPUT else 0,
        "linear_to_gemm": linear_to_gemm(model) if LINEAR_TO_GEMM else 0,
        "relu_on_integers": relu_on_integers(model),
        "dropped_output_round_trips": drop_output_round_trip(model),
        "quantized_bias": quantize_bias(model),
    }
    RemoveUnusedNodesPass()(model)  # drops the float biases that were replaced (and their initializers)
    TopologicalSortPass()(model)
    return changes
