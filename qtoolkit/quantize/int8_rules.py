"""Rules on torch's converted FX INT8 graph that keep more of the network on the integer grid.

torch.ao leaves some ops in float between ``dequantize`` and ``quantize`` although an INT8 form
exists. Each rule rewrites such a group into ops that torch's own INT8 kernels run, so torch's
converted model stays the parity reference, and the exported QDQ graph gives onnxruntime a group
it fuses (QLinearSigmoid + QLinearMul, integer Split) instead of a float island between
DequantizeLinear/QuantizeLinear with NCHW<->NHWC Transposes around it.

* ``silu_on_int8``: ``quantize(silu(dequantize(x)), s, zp)`` becomes
  ``quantized.mul(x, sigmoid(x), s, zp)``, i.e. SiLU(x) = x · σ(x) with σ on torch's fixed INT8
  output grid (scale 1/256, zero point 0: σ ∈ (0, 1) needs no calibration) and the product
  requantized to the calibrated SiLU output qparams. This is how onnxruntime's quantizer runs SiLU
  (its FP32 graph already spells it Sigmoid·Mul). Error: |Δσ| ≤ 1/512, so |Δ(x·σ)| ≤ |x|/512 before
  the output rounding.
* ``hardswish_on_int8``: torch's INT8 Hardswish becomes ``quantized.mul(x, hardsigmoid(x), s, zp)``
  (hardsigmoid on the fixed 1/256 grid), the form onnxruntime fuses (HardSigmoid, QLinearMul).
* ``drop_eval_identities`` / ``drop_requantize``: identity calls in eval mode (torchvision's
  ``stochastic_depth``) go, and a dequantize -> quantize requantize of an INT8 tensor feeding
  kernels that take any grid is dropped.
* ``float_output_tail``: a final quantize/dequantize round trip of a float result is dropped.
* ``split_on_int8``: ``dequantize(x) -> chunk/split -> getitem_i -> quantize(s_i, zp_i)`` becomes
  ``chunk(x) -> getitem_i``: the pieces stay on x's grid (ShuffleNet's channel split). Every piece
  of x already lies on x's grid, so requantizing it onto another grid can only add rounding. A
  ``cat`` that received such a piece becomes ``quantized.cat`` onto its calibrated grid (as
  onnxruntime's QLinearConcat requantizes each input).
* ``select_on_int8``: ``dequantize(x) -> x[i] -> quantize(s_i, zp_i)`` for every basic index of x
  (attention's q, k, v picked out of the in-projection tensor) becomes ``x[i]`` on x's grid, the
  same argument as for a split; onnxruntime's quantizer keeps them on that grid too.
* ``cat_on_int8``: a plain ``torch.cat`` of INT8 tensors (ViT's class token and patch tokens)
  becomes ``quantized.cat`` onto its first input's grid. torch's quantized ``cat`` kernel already
  outputs the first input's (scale, zero point), requantizing the others, so torch's numbers do
  not change; the QDQ reference and the ONNX graph now round onto that grid too (a Concat between
  DequantizeLinear and QuantizeLinear: QLinearConcat in onnxruntime), where before they kept the
  other inputs on their own grids, off torch's by up to half an LSB.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import fx, nn

SILU_FUNCTIONS = (F.silu, torch.nn.functional.silu)
SPLIT_METHODS = ("chunk", "split", "tensor_split")
SPLIT_FUNCTIONS = (torch.chunk, torch.split, torch.tensor_split)


def _is_dequantize(node: object) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_method" and node.target == "dequantize"


def _is_quantize(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is torch.quantize_per_tensor


def _is_silu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.SiLU)
    return node.op == "call_function" and node.target in SILU_FUNCTIONS


def _is_split(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in SPLIT_METHODS
    return node.op == "call_function" and node.target in SPLIT_FUNCTIONS


def silu_on_int8(gm: fx.GraphModule) -> list[str]:
    """SiLU between dequantize and quantize -> x · sigmoid(x) on INT8 (module docstring)."""
    done = []
    for node in list(gm.graph.nodes):
        if not _is_silu(gm, node) or not _is_dequantize(node.args[0]) or len(node.users) != 1:
            continue
        dq, quantize = node.args[0], next(iter(node.users))
        if not _is_quantize(quantize) or quantize.args[3] != torch.quint8:
            continue
        source, scale, zero_point = dq.args[0], quantize.args[1], quantize.args[2]
        with gm.graph.inserting_before(quantize):
            sigmoid = gm.graph.call_function(torch.sigmoid, (source,))
            mul = gm.graph.call_function(torch.ops.quantized.mul, (source, sigmoid, scale, zero_point))
        quantize.replace_all_uses_with(mul)
        gm.graph.erase_node(quantize)
        gm.graph.erase_node(node)
        if not dq.users:
            gm.graph.erase_node(dq)
        done.append(str(node.target) if node.op == "call_module" else node.name)
    return _finish(gm, done)


def hardswish_on_int8(gm: fx.GraphModule) -> list[str]:
    """torch's INT8 Hardswish module -> ``quantized.mul(x, hardsigmoid(x), s, zp)`` (module docstring)."""
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(gm.get_submodule(str(node.target))) is not nnq.Hardswish:
            continue
        module, source = gm.get_submodule(str(node.target)), node.args[0]
        with gm.graph.inserting_before(node):
            gate = gm.graph.call_function(F.hardsigmoid, (source,))
            mul = gm.graph.call_function(
                torch.ops.quantized.mul, (source, gate, float(module.scale), int(module.zero_point))
            )
        node.replace_all_uses_with(mul)
        gm.graph.erase_node(node)
        done.append(str(node.target))
    return _finish(gm, done)


_SHAPE_METHODS = ("view", "reshape", "flatten", "squeeze", "contiguous")
_SHAPE_FUNCTIONS = (torch.flatten, torch.reshape, torch.squeeze)


def _is_shape_op(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.Flatten)
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return node.op == "call_function" and node.target in _SHAPE_FUNCTIONS


def float_output_tail(gm: fx.GraphModule) -> list[str]:
    """``quantize(y) -> [reshapes] -> dequantize -> [reshapes] -> output`` with float ``y``: drop the round trip.

    It only rounds a float result (a global pool's output) before handing it back in float;
    onnxruntime's quantizer leaves it out too, and one DequantizeLinear/QuantizeLinear less runs.
    """

    def skip_shape_ops(node: object) -> object:
        while isinstance(node, fx.Node) and _is_shape_op(gm, node) and len(node.users) == 1:
            node = node.args[0]
        return node

    done = []
    output = next(n for n in gm.graph.nodes if n.op == "output")
    for arg in output.all_input_nodes:
        dq = skip_shape_ops(arg)
        if not (_is_dequantize(dq) and len(dq.users) == 1):
            continue
        quantize = skip_shape_ops(dq.args[0])
        if not (isinstance(quantize, fx.Node) and _is_quantize(quantize) and len(quantize.users) == 1):
            continue
        dq.replace_all_uses_with(dq.args[0])
        gm.graph.erase_node(dq)
        quantize.replace_all_uses_with(quantize.args[0])
        gm.graph.erase_node(quantize)
        done.append(quantize.name)
    return _finish(gm, done)


# Functions that are the identity in eval mode: name -> index of their ``training`` argument.
EVAL_IDENTITY_FUNCTIONS: dict[str, int] = {"stochastic_depth": 3}


def drop_eval_identities(gm: fx.GraphModule) -> list[str]:
    """Remove calls such as torchvision's ``stochastic_depth(x, p, mode, training=False)``.

    torchvision marks ``stochastic_depth`` as an FX leaf, so torch.ao runs it in float between a
    dequantize and a quantize although it returns ``x`` in eval mode (EfficientNet's residuals).
    """
    done = []
    for node in list(gm.graph.nodes):
        index = (
            EVAL_IDENTITY_FUNCTIONS.get(getattr(node.target, "__name__", ""))
            if node.op == "call_function"
            else None
        )
        if index is None:
            continue
        training = node.args[index] if len(node.args) > index else node.kwargs.get("training", True)
        if training is not False:
            continue
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        done.append(node.name)
    return _finish(gm, done)


def drop_requantize(gm: fx.GraphModule) -> list[str]:
    """``quantize(dequantize(x), s, zp)`` of an INT8 ``x`` -> ``x`` when its users accept any qparams.

    Such a pair only moves ``x`` onto another grid (a rounding) before an op whose INT8 kernel
    takes inputs on any grid (quantized add/mul, conv); onnxruntime's quantizer has no such step.
    ``cat`` is left alone: torch's quantized ``cat`` outputs its first input's grid.
    """
    from qtoolkit.export.fixed_qparams import int8_values

    quantized, done = int8_values(gm), []
    for node in list(gm.graph.nodes):
        if (
            not _is_quantize(node)
            or not _is_dequantize(node.args[0])
            or node.args[0].args[0] not in quantized
        ):
            continue
        if any(user.op == "call_function" and user.target is torch.cat for user in node.users):
            continue
        node.replace_all_uses_with(node.args[0].args[0])
        gm.graph.erase_node(node)
        done.append(node.name)
    return _finish(gm, done)


def split_on_int8(gm: fx.GraphModule) -> list[str]:
    """chunk/split of a dequantized tensor whose pieces are all requantized -> split on INT8."""
    done = []
    for node in list(gm.graph.nodes):
        if not _is_split(node) or not _is_dequantize(node.args[0]) or len(node.args[0].users) != 1:
            continue
        pieces = list(node.users)
        if not all(p.op == "call_function" and p.target is operator.getitem for p in pieces):
            continue
        if not all(all(_is_quantize(u) for u in p.users) for p in pieces):
            continue
        dq = node.args[0]
        node.replace_input_with(dq, dq.args[0])
        gm.graph.erase_node(dq)
        for piece in pieces:
            _drop_requantizes(gm, piece)
        done.append(node.name)
    return _finish(gm, done)


def _drop_requantizes(gm: fx.GraphModule, piece: fx.Node) -> None:
    """``piece`` (now INT8 on its source's grid) replaces the quantize nodes that read it."""
    for quantize in list(piece.users):
        for user in list(quantize.users):
            if user.op == "call_function" and user.target is torch.cat:
                _cat_to_grid(gm, user, quantize.args[1], quantize.args[2])
        quantize.replace_all_uses_with(piece)
        gm.graph.erase_node(quantize)


def _basic_index(index: object) -> bool:
    """An index that views a tensor (ints, slices, None, ...): it keeps a quantized tensor's grid."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, int | slice) or p is None or p is Ellipsis for p in parts)


def select_on_int8(gm: fx.GraphModule) -> list[str]:
    """Pieces ``x[i]`` of a dequantized tensor that are all requantized -> picked on INT8 (module doc)."""
    done = []
    for dq in list(gm.graph.nodes):
        if not _is_dequantize(dq):
            continue
        picks = list(dq.users)
        if not picks or not all(
            p.op == "call_function" and p.target is operator.getitem and _basic_index(p.args[1])
            for p in picks
        ):
            continue
        if not all(p.users and all(_is_quantize(u) for u in p.users) for p in picks):
            continue
        for pick in picks:
            pick.replace_input_with(dq, dq.args[0])
            _drop_requantizes(gm, pick)
        gm.graph.erase_node(dq)
        done.append(dq.name)
    return _finish(gm, done)


def _cat_to_grid(gm: fx.GraphModule, cat: fx.Node, scale: object, zero_point: object) -> None:
    """``torch.cat`` (which outputs its first input's qparams) -> ``quantized.cat`` onto (scale, zp).

    torch.ao shares one observer among ``cat``'s inputs; once a piece of a split stays on its own
    grid the inputs differ, and the cat must requantize them onto the grid it was calibrated for.
    """
    tensors = cat.args[0]
    dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
    with gm.graph.inserting_before(cat):
        qcat = gm.graph.call_function(torch.ops.quantized.cat, (tensors, dim, scale, zero_point))
    cat.replace_all_uses_with(qcat)
    gm.graph.erase_node(cat)


# Ops whose quantized output keeps their input's (scale, zero point).
_GRID_METHODS = frozenset({"view", "reshape", "permute", "transpose", "flatten", "squeeze", "unsqueeze",
                           "contiguous", "expand", "repeat"})  # fmt: skip
_GRID_FUNCTIONS = (operator.getitem, torch.flatten, torch.reshape, torch.permute, torch.transpose)


def _constant(gm: fx.GraphModule, arg: object) -> object:
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = getattr(gm, str(arg.target))
        return value.item() if isinstance(value, torch.Tensor) else value
    return arg


def output_qparams(gm: fx.GraphModule, node: object) -> tuple[float, int] | None:
    """(scale, zero point) of an INT8 value of ``gm`` when the graph fixes them statically, else None."""
    while isinstance(node, fx.Node):
        if _is_quantize(node):
            scale, zero_point = (_constant(gm, a) for a in node.args[1:3])
            return (float(scale), int(zero_point)) if not isinstance(scale, fx.Node) else None
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if isinstance(getattr(module, "scale", None), float | torch.Tensor) and hasattr(
                module, "zero_point"
            ):
                return float(module.scale), int(module.zero_point)
            return None
        grid = (node.op == "call_method" and node.target in _GRID_METHODS) or (
            node.op == "call_function" and node.target in _GRID_FUNCTIONS
        )
        if not grid:
            return None
        node = node.args[0]
    return None


def cat_on_int8(gm: fx.GraphModule) -> list[str]:
    """``torch.cat`` of INT8 tensors -> ``quantized.cat`` onto its first input's grid (module docstring)."""
    from qtoolkit.export.fixed_qparams import int8_values

    quantized, done = int8_values(gm), []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.cat or not node.args:
            continue
        tensors = node.args[0]
        if not isinstance(tensors, list | tuple) or not all(t in quantized for t in tensors):
            continue
        qparams = output_qparams(gm, tensors[0])
        if qparams is None or all(output_qparams(gm, t) == qparams for t in tensors[1:]):
            continue  # unknown grid, or every input already on it
        _cat_to_grid(gm, node, *qparams)
        done.append(node.name)
    return _finish(gm, done)


def _finish(gm: fx.GraphModule, done: list[str]) -> list[str]:
    if done:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()  # the replaced SiLU/Hardswish modules
        gm.recompile()
    return done


# Rule name -> rule; :func:`qtoolkit.quantize.static.quantize_static` records what each changed.
INT8_RULES: dict[str, Callable[[fx.GraphModule], list[str]]] = {
    "eval_identities": drop_eval_identities,
    "drop_requantize": drop_requantize,
    "int8_silu": silu_on_int8,
    "int8_split": split_on_int8,
    "int8_select": select_on_int8,
    "int8_hardswish": hardswish_on_int8,
    "int8_cat": cat_on_int8,
    "float_output_tail": float_output_tail,
}


def modules_on_int8(int8_model: nn.Module) -> set[str]:
    """Paths of modules that torch's converted FX graph calls on quantized tensors (they run INT8)."""
    from qtoolkit.export.fixed_qparams import int8_values

    if not isinstance(int8_model, fx.GraphModule):
        return set()
    quantized = int8_values(int8_model)
    return {
        str(node.target)
        for node in int8_model.graph.nodes
        if node.op == "call_module" and node.all_input_nodes and node.all_input_nodes[0] in quantized
    }


def apply_int8_rules(int8_model: nn.Module) -> dict[str, list[str]]:
    """Run every rule on an FX-converted INT8 model; returns rule name -> places changed."""
    if not isinstance(int8_model, fx.GraphModule):
        return {}
    return {name: rule(int8_model) for name, rule in INT8_RULES.items()}
