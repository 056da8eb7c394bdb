"""ONNX graph passes that turn float MatMul / Gather nodes into torch's dynamic-INT8 arithmetic.

Linear (weight W_q int8 [K, N] = torch's int weight transposed, scale s_w, zero point z_w):

    x_q, s_x, z_x = quantize(x)                     # per tensor, uint8, at run time
    acc = MatMulInteger(x_q, W_q, z_x[, z_w])       # int32
    y   = Cast(acc, float) * (s_x * s_w)            # then the existing bias Add

``quantize`` is ``DynamicQuantizeLinear`` for 8-bit activations (q_max 255) and an explicit
ReduceMin/ReduceMax → QuantizeLinear subgraph for torch's 7-bit ``reduce_range`` (q_max 127), so the
ONNX model rounds exactly like fbgemm. The node pattern (DynamicQuantizeLinear → MatMulInteger → Cast
→ Mul(Mul(s_x, s_w)) → Add) is what onnxruntime's ``quantize_dynamic`` emits, and ORT's graph
optimizer fuses it into ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``.

Embedding (weight-only, per row r: E ≈ q[r] · s[r] + o[r], o = −z·s):

    y = Cast(Gather(E_q, ids), float) * Gather(s, ids)[..., None] + Gather(o, ids)[..., None]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

__all__ = ["EmbeddingQuant", "LinearQuant", "quantize_embedding_gathers", "quantize_linear_matmuls"]


@dataclass
class LinearQuant:
    """torch's quantized Linear: int8 weight [N, K], per-tensor or per-channel scale/zero point."""

    weight_q: np.ndarray  # int8 [N, K]
    scale: np.ndarray  # float32 [] or [N]
    zero_point: np.ndarray  # int8 [] or [N]
    reduce_range: bool  # activations quantized to 0..127 instead of 0..255


@dataclass
class EmbeddingQuant:
    """torch's weight-only quantized Embedding: uint8 rows with float scale and offset per row."""

    weight_q: np.ndarray  # uint8 [V, D]
    scale: np.ndarray  # float32 [V]
    offset: np.ndarray  # float32 [V]  (= −zero_point · scale)


def _const(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as an initializer called ``name`` and return its value."""
    array = np.array(array, copy=True, order="C")  # own the memory: ir.tensor keeps a reference, not a copy
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    graph.register_initializer(value)
    return value


def _unique(graph: ir.Graph, base: str) -> str:
    name, index = base, 0
    while name in graph.initializers:
        index += 1
        name = f"{base}_{index}"
    return name


def _quantize_activation(
    graph: ir.Graph, x: ir.Value, reduce_range: bool, tag: str
) -> tuple[list[ir.Node], tuple[ir.Value, ir.Value, ir.Value]]:
    """Nodes computing (x_q, s_x, z_x) for per-tensor asymmetric uint8 activations."""
    if not reduce_range:
        node = ir.node("DynamicQuantizeLinear", [x], num_outputs=3, name=f"{tag}/DynamicQuantizeLinear")
        return [node], (node.outputs[0], node.outputs[1], node.outputs[2])
    # fbgemm's ChooseQuantizationParams with qmin=0, qmax=127: range always contains 0.
    zero = _const(graph, _unique(graph, f"{tag}.zero"), np.array(0.0, np.float32))
    qmax = _const(graph, _unique(graph, f"{tag}.qmax"), np.array(127.0, np.float32))
    fallback = _const(graph, _unique(graph, f"{tag}.fallback_scale"), np.array(0.1, np.float32))
    nodes = [
        ir.node("ReduceMin", [x], {"keepdims": 0}, name=f"{tag}/ReduceMin"),
        ir.node("ReduceMax", [x], {"keepdims": 0}, name=f"{tag}/ReduceMax"),
    ]
    lo = ir.node("Min", [nodes[0].outputs[0], zero])
    hi = ir.node("Max", [nodes[1].outputs[0], zero])
    span = ir.node("Sub", [hi.outputs[0], lo.outputs[0]])
    raw_scale = ir.node("Div", [span.outputs[0], qmax])
    is_zero = ir.node("Equal", [raw_scale.outputs[0], zero])
    scale = ir.node("Where", [is_zero.outputs[0], fallback, raw_scale.outputs[0]])  # all-zero input
    neg_lo = ir.node("Neg", [lo.outputs[0]])
    zp_f = ir.node("Div", [neg_lo.outputs[0], scale.outputs[0]])
    zp_r = ir.node("Round", [zp_f.outputs[0]])
    zp_c = ir.node("Clip", [zp_r.outputs[0], zero, qmax])
    zp = ir.node("Cast", [zp_c.outputs[0]], {"to": ir.DataType.UINT8})
    xq = ir.node("QuantizeLinear", [x, scale.outputs[0], zp.outputs[0]])
    nodes += [lo, hi, span, raw_scale, is_zero, scale, neg_lo, zp_f, zp_r, zp_c, zp, xq]
    return nodes, (xq.outputs[0], scale.outputs[0], zp.outputs[0])


def quantize_linear_matmuls(model: ir.Model, table: dict[str, LinearQuant]) -> list[str]:
    """Rewrite every ``MatMul(x, <name>)`` whose weight initializer ``name`` is in ``table``.

    Returns the rewritten initializer names. Activations feeding several quantized MatMuls (Q, K, V)
    are quantized once. The float weight initializer is removed from the graph.
    """
    graph = model.graph
    done: list[str] = []
    shared: dict[tuple[int, bool], tuple[ir.Value, ir.Value, ir.Value]] = {}
    weights: dict[str, list[ir.Value]] = {}  # int8 initializers per float weight, made once
    calls: dict[str, int] = {}
    for node in list(graph):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        weight = node.inputs[1]
        if weight is None or weight.name not in table or weight.const_value is None:
            continue
        spec = table[weight.name]
        x = node.inputs[0]
        module = weight.name.removesuffix(".weight_t")
        calls[module] = calls.get(module, 0) + 1  # a module called twice: same weights, new node names
        tag = module if calls[module] == 1 else f"{module}#{calls[module]}"
        new_nodes: list[ir.Node] = []
        key = (id(x), spec.reduce_range)
        if key not in shared:
            quant_nodes, shared[key] = _quantize_activation(graph, x, spec.reduce_range, tag)
            new_nodes += quant_nodes
        xq, sx, zx = shared[key]
        if weight.name not in weights:
            weights[weight.name] = [
                _const(
                    graph, _unique(graph, f"{module}.weight_quantized"), np.ascontiguousarray(spec.weight_q.T)
                ),
                _const(graph, _unique(graph, f"{module}.weight_scale"), spec.scale.astype(np.float32)),
            ]
            if np.any(spec.zero_point != 0):
                weights[weight.name].append(
                    _const(graph, _unique(graph, f"{module}.weight_zero_point"), spec.zero_point)
                )
        wq, sw, *zero_point = weights[weight.name]
        inputs = [xq, wq, zx, *zero_point]
        mmi = ir.node("MatMulInteger", inputs, name=f"{tag}/MatMulInteger")
        cast = ir.node("Cast", [mmi.outputs[0]], {"to": ir.DataType.FLOAT}, name=f"{tag}/Cast")
        both = ir.node("Mul", [sx, sw], name=f"{tag}/ScaleProduct")
        out = ir.node("Mul", [cast.outputs[0], both.outputs[0]], name=f"{tag}/Rescale")
        new_nodes += [mmi, cast, both, out]
        graph.insert_before(node, new_nodes)
        _replace_output(graph, node, out.outputs[0])
        _drop_if_unused(graph, weight)
        if weight.name not in done:
            done.append(weight.name)
    return done


def quantize_embedding_gathers(model: ir.Model, table: dict[str, EmbeddingQuant]) -> list[str]:
    """Rewrite every ``Gather(<name>, ids)`` on a float embedding table listed in ``table``."""
    graph = model.graph
    done: list[str] = []
    for node in list(graph):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        weight = node.inputs[0]
        if weight is None or weight.name not in table or weight.const_value is None:
            continue
        spec = table[weight.name]
        ids = node.inputs[1]
        tag = weight.name.removesuffix(".weight")
        axis = {"axis": 0}
        eq = _const(graph, _unique(graph, f"{tag}.weight_quantized"), spec.weight_q)
        # [V, 1] so that the gathered scale/offset broadcast over the embedding dimension.
        es = _const(graph, _unique(graph, f"{tag}.weight_scale"), spec.scale.astype(np.float32)[:, None])
        eo = _const(graph, _unique(graph, f"{tag}.weight_offset"), spec.offset.astype(np.float32)[:, None])
        rows = ir.node("Gather", [eq, ids], axis, name=f"{tag}/GatherQuantized")
        scales = ir.node("Gather", [es, ids], axis, name=f"{tag}/GatherScale")
        offsets = ir.node("Gather", [eo, ids], axis, name=f"{tag}/GatherOffset")
        cast = ir.node("Cast", [rows.outputs[0]], {"to": ir.DataType.FLOAT}, name=f"{tag}/Cast")
        mul = ir.node("Mul", [cast.outputs[0], scales.outputs[0]], name=f"{tag}/Scale")
        add = ir.node("Add", [mul.outputs[0], offsets.outputs[0]], name=f"{tag}/Offset")
        graph.insert_before(node, [rows, scales, offsets, cast, mul, add])
        _replace_output(graph, node, add.outputs[0])
        _drop_if_unused(graph, weight)
        done.append(weight.name)
    return done


def _replace_output(graph: ir.Graph, node: ir.Node, new: ir.Value) -> None:
    """Make ``new`` take over the uses, name and type of ``node``'s only output; remove ``node``."""
    old = node.outputs[0]
    name = old.name
    new.shape, new.type = old.shape, old.type
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    old.name = None
    new.name = name


def _drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    if not value.uses() and value.name in graph.initializers and value not in graph.outputs:
        del graph.initializers[value.name]
