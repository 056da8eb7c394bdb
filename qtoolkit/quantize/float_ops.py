"""Which parts of a converted INT8 model run in float in its ONNX export.

Two kinds of float op end up between DequantizeLinear and QuantizeLinear in the exported graph:
* ops torch.ao leaves unquantized (GELU, functional softmax ...): float modules in the torch model,
  or, when called as functions (``F.gelu`` in ``nn.TransformerEncoderLayer``), float call nodes
  that read a ``dequantize`` in the converted FX graph;
* ops torch.ao "quantizes" with kernels that dequantize, compute in float and requantize
  (LayerNorm, GroupNorm, InstanceNorm, BatchNorm not folded into a conv, Softmax): ONNX Runtime has
  no integer kernel for them, so they are float islands ``DQ -> op -> Q`` in the graph.
:func:`float_in_onnx` names the second kind, the functional first kind (and the biased attention softmax of
:mod:`qtoolkit.quantize.attention`), so that warnings and reports can say what stays float.
"""

from __future__ import annotations

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import fx, nn

# Quantized module types whose ONNX reference is a float op followed by Q/DQ.
FLOAT_IN_ONNX_MODULES: tuple[type, ...] = (
    nnq.LayerNorm, nnq.GroupNorm, nnq.InstanceNorm1d, nnq.InstanceNorm2d, nnq.InstanceNorm3d,
    nnq.BatchNorm2d, nnq.BatchNorm3d, nniq.BNReLU2d, nniq.BNReLU3d, nnq.Softmax, nnq.PReLU,
)  # fmt: skip
# torch.ops.quantized ops (FX graphs) with the same fate.
FLOAT_IN_ONNX_OPS = frozenset(
    {"layer_norm", "group_norm", "instance_norm", "batch_norm", "batch_norm2d", "batch_norm3d",
     "batch_norm2d_relu", "batch_norm3d_relu", "softmax"}
)  # fmt: skip

# Functional float ops torch.ao leaves unquantized (float modules are named by quantize_static).
FLOAT_FUNCTIONS = {
    F.gelu: "gelu", F.elu: "elu", F.selu: "selu", F.celu: "celu", F.softplus: "softplus", F.mish: "mish",
    F.layer_norm: "layer_norm", F.group_norm: "group_norm", F.softmax: "softmax", torch.softmax: "softmax",
    F.log_softmax: "log_softmax", torch.erf: "erf", torch.exp: "exp",
}  # fmt: skip


def _reads_dequantized(node: fx.Node) -> bool:
    return any(
        isinstance(arg, fx.Node) and arg.op == "call_method" and arg.target == "dequantize"
        for arg in node.args
    )


def float_in_onnx(int8_model: nn.Module, float_softmax: list[str] = ()) -> list[str]:
    """``name (kind)`` of every quantized module/op of ``int8_model`` that runs float in ONNX;
    ``float_softmax``: attention modules whose biased softmax stays float."""
    found = [
        f"{name} ({type(module).__name__})"
        for name, module in int8_model.named_modules()
        if name and type(module) in FLOAT_IN_ONNX_MODULES
    ]
    if isinstance(int8_model, fx.GraphModule):
        for node in int8_model.graph.nodes:
            if node.op != "call_function":
                continue
            if node.target in FLOAT_FUNCTIONS and _reads_dequantized(node):
                found.append(f"{node.name} ({FLOAT_FUNCTIONS[node.target]})")
                continue
            namespace, _, op = str(node.target).partition(".")
            if namespace == "quantized" and op.split(".")[0] in FLOAT_IN_ONNX_OPS:
                found.append(f"{node.name} (quantized::{op.split('.')[0]})")
    return found + [f"{name} (softmax with position bias)" for name in float_softmax]
