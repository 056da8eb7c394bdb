"""Fixed-qparams ops (sigmoid, hardsigmoid, tanh) in the float reference of an FX INT8 graph.

torch's converted graph applies ``sigmoid`` & co. directly to quantized tensors; their INT8 kernels
write a fixed output grid that needs no calibration, because the op's range is known:
σ, hardsigmoid ∈ [0, 1] -> scale 1/256, zero point 0; tanh ∈ [-1, 1] -> scale 2/256, zero point 128
(quint8). The reference (``qtoolkit.export.reference``) drops the ``dequantize`` nodes, so without
this pass the op would run in float and its output would reach the next op unquantized (a float
Sigmoid and float Mul in squeeze-excite blocks). :func:`requantize_fixed_qparams_ops` inserts a
frozen QDQ with the fixed qparams after each such op whose input is quantized: exactly what
torch's INT8 kernel computes, and the DequantizeLinear -> Sigmoid -> QuantizeLinear group that
onnxruntime fuses into QLinearSigmoid.

Whether a value is quantized is propagated through the graph: ``quantize_per_tensor``, quantized
modules and ``quantized::`` ops make INT8 values, ``dequantize`` makes float ones, other ops pass
on the kind of their tensor inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

# torch quantized op -> (scale, zero point) of its quint8 output, keyed by how the graph calls it.
FIXED_QPARAMS: dict[str, tuple[float, int]] = {
    "sigmoid": (1.0 / 256.0, 0),
    "hardsigmoid": (1.0 / 256.0, 0),
    "tanh": (2.0 / 256.0, 128),
}
_MODULES: dict[type, str] = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid", nn.Tanh: "tanh"}
_FUNCTIONS: dict[Callable[..., object], str] = {
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.hardsigmoid: "hardsigmoid",
    torch.tanh: "tanh",
    F.tanh: "tanh",
}


def _fixed_op(gm: fx.GraphModule, node: fx.Node) -> str | None:
    if node.op == "call_module":
        return _MODULES.get(type(gm.get_submodule(str(node.target))))
    if node.op == "call_function":
        return _FUNCTIONS.get(node.target)
    if node.op == "call_method":
        name = str(node.target).rstrip("_")
        return name if name in FIXED_QPARAMS else None
    return None


def _makes_int8(gm: fx.GraphModule, node: fx.Node) -> bool | None:
    """True/False when ``node`` itself decides its output's kind; None when it passes it on."""
    if node.op in ("placeholder", "get_attr", "output"):
        return False
    if node.op == "call_method" and node.target == "dequantize":
        return False
    if node.op == "call_function" and node.target in (torch.quantize_per_tensor, torch.quantize_per_channel):
        return True
    if node.op == "call_function" and str(node.target).startswith("quantized."):
        return True  # torch.ops.quantized.add / mul / ...
    if node.op == "call_module":
        module = type(gm.get_submodule(str(node.target)))
        if module.__module__.startswith("torch.ao.nn.") and ".quantized" in module.__module__:
            return module.__name__ != "DeQuantize"
    return None


def int8_values(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes of ``gm`` (torch's converted FX graph) whose outputs are quantized tensors."""
    quantized: set[fx.Node] = set()
    for node in gm.graph.nodes:
        decided = _makes_int8(gm, node)
        if decided is None:
            decided = any(a in quantized for a in node.all_input_nodes)
        if decided:
            quantized.add(node)
    return quantized


def requantize_fixed_qparams_ops(
    gm: fx.GraphModule, make_qdq: Callable[[float, int], nn.Module]
) -> list[str]:
    """Insert ``make_qdq(scale, zero_point)`` after fixed-qparams ops on INT8 inputs (see module doc)."""
    quantized, done = int8_values(gm), []
    for index, node in enumerate(list(gm.graph.nodes)):
        op = _fixed_op(gm, node)
        if op is None or not node.all_input_nodes or node.all_input_nodes[0] not in quantized:
            continue
        name = f"qtk_fixed_qdq_{index}"
        gm.add_submodule(name, make_qdq(*FIXED_QPARAMS[op]))
        with gm.graph.inserting_after(node):
            qdq = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(qdq, delete_user_cb=lambda user, qdq=qdq: user is not qdq)
        done.append(node.name)
    if done:
        gm.recompile()
    return done
