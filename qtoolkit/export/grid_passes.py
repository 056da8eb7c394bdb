"""Keep grid-preserving ops of a QDQ graph on the INT8 grid, so onnxruntime fuses across them.

torch's INT8 model runs ``cat``, ``chunk``/``split``, slicing, max-pooling and reshapes directly on
quantized tensors: their outputs carry the input's (scale, zero point) and no requantize is
needed. The float reference (``qtoolkit.export.reference``) drops torch's ``dequantize`` nodes, so
in the exported graph these ops read a DequantizeLinear but write a plain float tensor. The next
Conv then sees a float input and stays a float Conv, and onnxruntime wraps every such island in
NCHW<->NHWC Transposes (squeezenet1_1: 8 of 26 Convs float, 24 Transposes).

:func:`requantize_grid_ops` gives each such output a QuantizeLinear/DequantizeLinear pair with the
input's qparams. It is exact: every value of ``op(DQ(q))`` already lies on the grid
``(k - zp) * scale`` of the input (max, copies, concatenation of tensors on one grid), so
``DQ(Q(y)) = y``; the pair only tells onnxruntime that the tensor is INT8 (QLinearConcat,
NhwcMaxPool, integer Split/Reshape/Transpose) and lets the next Conv become a QLinearConv.

* single-input ops (``SINGLE_INPUT_OPS``): the input comes from a per-tensor DequantizeLinear;
  every output (Split has several) gets the pair;
* ``Concat``: all inputs come from DequantizeLinears with equal scalar qparams (torch.ao shares
  one observer among ``cat``'s inputs), and the output gets the pair.

Nodes are visited in topological order, so chains (Concat -> MaxPool -> Concat) are handled in
one pass.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtoolkit.export.qdq_passes import (
    PASSTHROUGH_OPS,
    _const,
    _dequantize_params,
    _initializer,
    _unique,
    insert_reader,
    requantize_output,
)

# Ops with one data input whose INT8 outputs keep that input's qparams (copies, max, reshapes).
SINGLE_INPUT_OPS = PASSTHROUGH_OPS | {
    "Split",
    "Slice",
    "Expand",
    "Tile",
    "Gather",
    "DepthToSpace",
    "SpaceToDepth",
}
MULTI_INPUT_OPS = frozenset({"Concat"})


def _grid_of(value: ir.Value | None) -> tuple[ir.Node, float, int] | None:
    """(DequantizeLinear node, scale, zero point) when ``value`` is read through a per-tensor DQ."""
    params = _dequantize_params(value)
    if params is None or params[0].size != 1:
        return None
    return value.producer(), float(params[0].reshape(())), int(params[1].reshape(()))


def _common_grid(node: ir.Node) -> ir.Node | None:
    """The DequantizeLinear whose qparams every data input of ``node`` shares, or None."""
    if node.op_type in MULTI_INPUT_OPS:
        grids = [_grid_of(value) for value in node.inputs]
        if not grids or any(g is None for g in grids):
            return None
        first = grids[0]
        same = all(g[1] == first[1] and g[2] == first[2] for g in grids)
        dtypes = {np.dtype(_dequantize_params(v)[1].dtype) for v in node.inputs}
        return first[0] if same and len(dtypes) == 1 else None
    grid = _grid_of(node.inputs[0]) if node.inputs else None
    return grid[0] if grid is not None else None


def requantize_grid_ops(model: ir.Model) -> int:
    """Put the outputs of grid-preserving ops back on their input's grid (module docstring)."""
    graph, count = model.graph, 0
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in SINGLE_INPUT_OPS | MULTI_INPUT_OPS:
            continue
        source = _common_grid(node)
        if source is None:
            continue
        for output in node.outputs:
            count += requantize_output(graph, node, output, source)
    return count


# Ops that pick part of their input: run on the integers, dequantize only what they keep.
SELECT_OPS = frozenset({"Gather", "Slice"})


def select_on_integers(model: ir.Model) -> int:
    """Run ``DQ → Gather/Slice → Q`` as ``Gather/Slice → DQ → Q`` on the integer tensor.

    Exact: a per-tensor DequantizeLinear is elementwise, so ``select(DQ(q)) = DQ(select(q))``. It
    matters where the Q after the select has other qparams than the DQ before it (so onnxruntime
    cannot drop the pair): attention's q, k, v are picked out of one in-projection tensor and each
    requantized onto its own grid. Before, every pick dequantized the whole 3×E tensor (onnxruntime
    duplicates a DQ per reader: vit_b_16 36 DQs of 3×E per run); after, it gathers the int8 tensor
    and dequantizes only its E.
    """
    graph, count = model.graph, 0
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in SELECT_OPS or len(node.outputs) != 1:
            continue
        grid, output = _grid_of(node.inputs[0]), node.outputs[0]
        consumers = list(output.consumers())
        if grid is None or output.is_graph_output() or not consumers:
            continue
        if any(c.op_type != "QuantizeLinear" for c in consumers):
            continue  # a float reader: requantize_grid_ops keeps the select on the grid instead
        source = grid[0]
        scale, integers = source.inputs[1], source.inputs[0]
        node.replace_input_with(0, integers)
        output.dtype = integers.dtype if integers.dtype is not None else source.inputs[2].dtype
        dq = ir.node(
            "DequantizeLinear",
            [output, *source.inputs[1:]],
            name=_unique(graph, f"{node.name}_dq"),
        )
        dq.outputs[0].shape, dq.outputs[0].dtype = output.shape, scale.dtype
        insert_reader(graph, node, dq)
        count += 1
    return count


def fold_scale_into_dequantize(model: ir.Model) -> int:
    """Fold ``DQ(x, s, zp) · c`` (c a positive constant scalar) into ``DQ(x, s·c, zp)``.

    Exact: ``(x − zp)·s·c``. Attention scales its scores by 1/√d between the q·kᵀ MatMul and the
    softmax (``quantize.attention``); with the Mul folded, onnxruntime sees ``DQ → Softmax → Q`` and
    fuses QLinearSoftmax (or the Add of a position bias reads the DQ directly).
    """
    graph, count = model.graph, 0
    for mul in list(graph):
        if mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.inputs) != 2:
            continue
        for side in (0, 1):
            data, factor = mul.inputs[side], _const(mul.inputs[1 - side])
            grid = _grid_of(data)
            if grid is None or factor is None or factor.ndim != 0 or not np.isfinite(factor) or factor <= 0:
                continue
            if len(list(data.consumers())) != 1 or data.is_graph_output() or mul.outputs[0].is_graph_output():
                continue
            dq, scale = grid[0], _const(grid[0].inputs[1])
            folded = _initializer(
                graph, _unique(graph, f"{dq.name}_scale_folded"), (scale * factor).astype(scale.dtype)
            )
            dq.replace_input_with(1, folded)
            mul.outputs[0].replace_all_uses_with(data)
            graph.remove(mul, safe=True)
            count += 1
            break
    return count


_TAIL_SHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def drop_output_round_trip(model: ir.Model) -> int:
    """Remove ``pool -> Q -> DQ -> [reshapes] -> graph output`` round trips after an averaging op.

    ``requantize_passthrough`` puts an averaging op's output back on its input grid; when that
    output only flows to the graph output (the last global pool of a conv-only classifier), the
    pair just rounds the logits. torch's FX INT8 model hands that pool's float result back
    (``qtoolkit.quantize.int8_rules.float_output_tail``), and so does onnxruntime's quantizer.
    """
    graph, count = model.graph, 0
    for q in list(graph):
        if q.op_type != "QuantizeLinear" or q.inputs[0] is None:
            continue
        producer = q.inputs[0].producer()
        if producer is None or producer.op_type not in {"AveragePool", "GlobalAveragePool", "ReduceMean"}:
            continue
        users = list(q.outputs[0].consumers())
        if len(users) != 1 or users[0].op_type != "DequantizeLinear":
            continue
        dq, value, ends_in_output = users[0], users[0].outputs[0], False
        while True:  # follow single-consumer reshapes down to a graph output
            consumers = list(value.consumers())
            if value.is_graph_output():
                ends_in_output = not consumers
                break
            if len(consumers) != 1 or consumers[0].op_type not in _TAIL_SHAPE_OPS:
                break
            value = consumers[0].outputs[0]
        if not ends_in_output:
            continue
        if dq.outputs[0].is_graph_output():
            continue  # renaming a graph output is not worth it for one pair
        dq.outputs[0].replace_all_uses_with(q.inputs[0])
        graph.remove([dq, q], safe=True)
        count += 1
    return count


def _reduced_axes(node: ir.Node) -> list[int] | None:
    """ReduceMean's axes (input since opset 18, attribute before), or None when not constant."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = _const(node.inputs[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    axes = node.attributes.get_ints("axes")
    return None if axes is None else list(axes)


def spatial_means_as_global_pools(model: ir.Model) -> int:
    """``DQ → ReduceMean(all spatial axes, keepdims) → Q`` becomes ``GlobalAveragePool``: the same mean.

    torch exports global average pooling (squeeze-excite's squeeze, classifier heads) as ReduceMean,
    which onnxruntime has no integer kernel for: it dequantized the whole feature map to float
    (efficientnet_b0 b1: DequantizeLinear 2.2 ms + ReduceMean 1.3 ms of 12.2 ms, onnxruntime's own
    quantizer's file alike). ``DQ → GlobalAveragePool → Q`` fuses into QLinearGlobalAveragePool, which
    reads the uint8 map (0.2 ms).
    """
    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or not node.inputs:
            continue
        shape, axes = node.inputs[0].shape, _reduced_axes(node)
        if node.attributes.get_int("keepdims", 1) == 0 or shape is None or axes is None or len(shape) < 3:
            continue
        if (
            sorted(a % len(shape) for a in axes) != list(range(2, len(shape)))
            or _grid_of(node.inputs[0]) is None
        ):
            continue
        if node.outputs[0].is_graph_output():
            continue  # a model ending in the pool: keep the graph output (and its name) as it is
        pool = ir.node("GlobalAveragePool", [node.inputs[0]], name=_unique(graph, f"{node.name}_global_pool"))
        pool.outputs[0].shape, pool.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
        graph.insert_before(node, pool)
        node.outputs[0].replace_all_uses_with(pool.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count
