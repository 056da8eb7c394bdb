"""Weight passes for Linear layers: one weight chain per reader, and ≥3-D Linear as one integer Gemm.

:func:`unshare_weights`: torch's exporter merges identical constant subgraphs, so layers whose INT8
weights are equal (``nn.TransformerEncoder`` clones one layer N times; untrained, they stay equal)
end up reading one ``DQ(W) → Transpose``. onnxruntime fuses a quantized MatMul only when its
weight's DequantizeLinear feeds it alone, and does not split a shared Transpose: both layers ran
as float MatMul (``FusedMatMul``). Each reader gets its own copy of the chain (the initializer
stays shared, so the file does not grow).

Linear layers on ≥3-D activations as one integer Gemm:

torch exports ``F.linear`` on a 3-D or 4-D input (ConvNeXt's channels-last MLP, ViT/Swin token MLPs)
as ``MatMul(x, Wᵀ) + b``. In the QDQ graph the MatMul output goes to the float bias ``Add``, not to a
QuantizeLinear, so onnxruntime runs it as ``MatMulIntegerToFloat`` and the bias ``Add`` in float
(convnext_tiny: 36 float Adds; onnxruntime's own quantizer gets QLinearMatMul + QLinearAdd).

:func:`linear_to_gemm` rewrites ``DQ(q) → MatMul(·, Transpose(DQ(W))) → Add(b) → Q`` into

    Reshape(q, [-1, K]) → DQ → Gemm(·, DQ(W), b, transB=1) → Q → Reshape(·, [-1, d₁, …, N])

with both Reshapes on the uint8 tensors (they only relabel the axes: no Q/DQ needed around them).
The same arithmetic, y = x·Wᵀ + b over the last axis, so the exported numbers do not change;
``quantize_bias`` then gives the Gemm its int32 bias and onnxruntime fuses one QGemm. Only the first
axis of the activation may be dynamic (the batch): the shape back is a constant, so no Shape/Gather
subgraph appears (OpenVINO and onnxruntime both run constant-shape Reshapes without shape math).

Linear layers whose INT8 output only feeds float ops, with a float output:

torch's INT8 Linear rounds its output to uint8; when the only readers are ops onnxruntime runs in
float (GELU, LayerNorm: ConvNeXt/ViT/Swin MLPs' first Linear), the graph is ``QGemm → uint8 → DQ →
Gelu``. :func:`linear_to_float_output` gives them ``com.microsoft.MatMulIntegerToFloat`` instead (the
same uint8 × int8 product with the float bias fused, y = (x_q − zp)·s_x · (W_q·s_w)ᵀ + b, written
as float): one QuantizeLinear and one DequantizeLinear pass fewer over the widest tensor of the block,
and QGemm's int32 bias broadcast over the whole output (convnext_tiny b8: 0.87x onnxruntime's own
file, from 1.03x). The float op reads the product one rounding earlier than torch's INT8 model does
(≤ ½ LSB of that output grid). OpenVINO's ONNX reader runs the op too.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtoolkit.export.qdq_passes import _const, _dequantize_params, _initializer, _unique, insert_reader

MS_DOMAIN = "com.microsoft"
# Ops onnxruntime runs only in float (no QDQ integer kernel): a Linear feeding nothing else keeps a float output.
FLOAT_ONLY_READERS = frozenset({"Gelu", "LayerNormalization", "GroupNormalization", "InstanceNormalization"})


def _single_consumer(value: ir.Value) -> ir.Node | None:
    consumers = list(value.consumers())
    return consumers[0] if len(consumers) == 1 and not value.is_graph_output() else None


def _weight_of(value: ir.Value) -> ir.Value | None:
    """The [N, K] DequantizeLinear output of a constant INT8 weight that ``value`` transposes, or None."""
    transpose = value.producer()
    if transpose is None or transpose.op_type != "Transpose":
        return None
    perm = transpose.attributes.get("perm")
    weight = transpose.inputs[0]
    params = _dequantize_params(weight)
    if perm is None or list(perm.as_ints()) != [1, 0] or params is None:
        return None
    int_weight = _const(weight.producer().inputs[0])
    per_output_channel = params[0].size == 1 or params[2] in (0, -2)  # Gemm(transB) scales rows of W
    return weight if int_weight is not None and int_weight.ndim == 2 and per_output_channel else None


def _bias_of(add: ir.Node, matmul_out: ir.Value, channels: int) -> ir.Value | None:
    other = add.inputs[1] if add.inputs[0] is matmul_out else add.inputs[0]
    bias = _const(other)
    if bias is None or other.producer() is not None or bias.shape != (channels,):
        return None
    return other


def _reshape(graph: ir.Graph, data: ir.Value, shape: list[int], base: str) -> ir.Node:
    """A Reshape of ``data`` to the constant ``shape`` (-1: the dynamic batch), not yet inserted."""
    target = _initializer(graph, _unique(graph, f"{base}_shape"), np.array(shape, dtype=np.int64))
    return ir.node("Reshape", [data, target], {"allowzero": 0}, name=_unique(graph, base))


def unshare_weights(model: ir.Model) -> int:
    """Give every extra reader of a shared ``DQ(constant) [→ Transpose]`` its own copy: copies made."""
    graph, count = model.graph, 0
    for dq in list(graph):
        if dq.op_type != "DequantizeLinear" or _const(dq.inputs[0]) is None:
            continue
        chain, end = [dq], dq.outputs[0]
        transpose = _single_consumer(end)
        if transpose is not None and transpose.op_type == "Transpose":
            chain, end = [dq, transpose], transpose.outputs[0]
        uses = list(end.uses())
        if end.is_graph_output() or len(uses) < 2:
            continue
        for user, index in uses[1:]:
            copies: list[ir.Node] = []
            for node in chain:
                inputs = list(node.inputs)
                if copies:  # the Transpose reads the DQ copy
                    inputs[0] = copies[-1].outputs[0]
                copies.append(ir.node(node.op_type, inputs, dict(node.attributes), domain=node.domain,
                                      name=_unique(graph, f"{node.name}_unshared")))  # fmt: skip
            graph.insert_before(user, copies)
            user.replace_input_with(index, copies[-1].outputs[0])
            count += 1
    return count


def linear_to_gemm(model: ir.Model) -> int:
    """Rewrite quantized ≥3-D Linear layers into uint8 Reshape → QGemm → Reshape (module docstring)."""
    graph, count = model.graph, 0
    for matmul in list(graph):
        if matmul.op_type != "MatMul" or matmul.domain not in ("", "ai.onnx"):
            continue
        x, weight = matmul.inputs[0], _weight_of(matmul.inputs[1])
        x_params = _dequantize_params(x)
        if weight is None or x_params is None or x_params[0].size != 1:
            continue
        n_out, k_in = _const(weight.producer().inputs[0]).shape
        add = _single_consumer(matmul.outputs[0])
        if add is None or add.op_type != "Add":
            continue
        shape = matmul.outputs[0].shape or add.outputs[0].shape
        if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in list(shape)[1:]):
            continue  # only the batch axis may be dynamic: the shape back must be a constant
        inner = list(shape)[1:-1]
        bias = _bias_of(add, matmul.outputs[0], n_out)
        q = _single_consumer(add.outputs[0])
        if bias is None or q is None or q.op_type != "QuantizeLinear" or q.outputs[0].is_graph_output():
            continue
        x_dq = x.producer()
        flat = _reshape(graph, x_dq.inputs[0], [-1, k_in], f"{matmul.name}_flat")
        dq = ir.node("DequantizeLinear", [flat.outputs[0], *x_dq.inputs[1:]], name=f"{flat.name}_dq")
        gemm = ir.node("Gemm", [dq.outputs[0], weight, bias], {"transB": 1}, name=f"{flat.name}_gemm")
        graph.insert_before(matmul, [flat, dq, gemm])
        q.replace_input_with(0, gemm.outputs[0])
        q.outputs[0].shape = None  # 2-D now; shape inference fills it in
        back = _reshape(graph, q.outputs[0], [-1, *inner, n_out], f"{q.name}_unflat")
        back.outputs[0].shape, back.outputs[0].type = add.outputs[0].shape, q.outputs[0].type
        insert_reader(graph, q, back)
        graph.remove([add, matmul], safe=True)
        count += 1
    return count


def _linear_parts(
    node: ir.Node,
) -> tuple[ir.Value, ir.Value, ir.Value | None, ir.Value, list[ir.Node]] | None:
    """(x read through DQ, [N, K] weight DQ output, float bias or None, output, nodes it replaces) of a
    quantized Linear: ``MatMul(DQ(x), Transpose(DQ(W))) [+ b]`` or ``Gemm(DQ(x), DQ(W), b, transB=1)``."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "MatMul":
        weight, out, bias, nodes = _weight_of(node.inputs[1]), node.outputs[0], None, [node]
        add = _single_consumer(out)
        if weight is not None and add is not None and add.op_type == "Add":
            bias = _bias_of(add, out, _const(weight.producer().inputs[0]).shape[0])
            if bias is not None:
                out, nodes = add.outputs[0], [node, add]
    elif node.op_type == "Gemm":
        attrs = {name: attr.value for name, attr in node.attributes.items()}
        plain = attrs.get("transB") == 1 and not attrs.get("transA", 0)
        params = _dequantize_params(node.inputs[1])
        if not plain or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or params is None:
            return None
        if not (params[0].size == 1 or params[2] in (0, -2)):  # per output channel: rows of the [N, K] W
            return None
        weight, out, nodes = node.inputs[1], node.outputs[0], [node]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None and (bias.producer() is not None or _const(bias) is None):
            return None
    else:
        return None
    int_weight = _const(weight.producer().inputs[0]) if weight is not None else None
    if int_weight is None or int_weight.ndim != 2:
        return None
    if bias is not None and _const(bias).size != int_weight.shape[0]:
        return None
    return node.inputs[0], weight, bias, out, nodes


def _float_readers_only(q: ir.Node) -> list[ir.Node] | None:
    """The DequantizeLinear readers of ``q``'s output when every op they feed runs only in float."""
    readers = list(q.outputs[0].consumers())
    if q.outputs[0].is_graph_output() or not readers or any(r.op_type != "DequantizeLinear" for r in readers):
        return None
    for dq in readers:
        users = list(dq.outputs[0].consumers())
        if (
            dq.outputs[0].is_graph_output()
            or not users
            or any(u.op_type not in FLOAT_ONLY_READERS for u in users)
        ):
            return None
    return readers


def linear_to_float_output(model: ir.Model) -> int:
    """Rewrite quantized Linear layers read only by float ops into MatMulIntegerToFloat (module docstring)."""
    graph, count = model.graph, 0
    for node in list(graph):
        parts = _linear_parts(node)
        if parts is None:
            continue
        x, weight, bias, out, replaced = parts
        x_params, q = _dequantize_params(x), _single_consumer(out)
        if x_params is None or x_params[0].size != 1 or q is None or q.op_type != "QuantizeLinear":
            continue
        readers = _float_readers_only(q)
        if readers is None:
            continue
        x_dq, w_dq = x.producer(), weight.producer()
        int_weight = _const(w_dq.inputs[0])
        w_scale, w_zero, _ = _dequantize_params(weight)
        name = _unique(graph, f"{node.name}_float_out")
        w_kn = _initializer(graph, f"{name}_weight", np.ascontiguousarray(int_weight.T))
        scale = _initializer(graph, f"{name}_w_scale", w_scale.astype(np.float32))
        zero = _initializer(
            graph, f"{name}_w_zero_point", w_zero.astype(int_weight.dtype).reshape(w_scale.shape)
        )
        inputs = [
            x_dq.inputs[0],
            w_kn,
            x_dq.inputs[1],
            scale,
            x_dq.inputs[2] if len(x_dq.inputs) > 2 else None,
            zero,
        ]
        if bias is not None:
            inputs.append(_initializer(graph, f"{name}_bias", _const(bias).astype(np.float32).reshape(-1)))
        fused = ir.node("MatMulIntegerToFloat", inputs, domain=MS_DOMAIN, name=name)
        fused.outputs[0].type, fused.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), out.shape
        graph.insert_before(replaced[0], fused)
        for dq in readers:
            dq.outputs[0].replace_all_uses_with(fused.outputs[0])
        graph.remove([*readers, q, *reversed(replaced)], safe=True)
        count += 1
    if count:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    return count
