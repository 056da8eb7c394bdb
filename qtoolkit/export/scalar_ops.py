"""Quantized ops with a Python number operand, rewritten for the QDQ reference (float ops on the
input's grid, checked against torch's own kernel on a probe)."""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import fx, nn

from qtoolkit.errors import QtkError

_SAME_GRID_METHODS = frozenset(
    {"permute", "reshape", "view", "flatten", "transpose", "contiguous", "squeeze", "unsqueeze", "mean"}
)
# torch's quantized kernels for these keep their input's (scale, zero point); mean and average pools too
_SAME_GRID_MODULES = (
    nn.Identity, nn.Dropout, nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)  # fmt: skip


def add_scalar(gm: fx.GraphModule, node: fx.Node, add_qdq: Callable[..., fx.Node]) -> None:
    """``quantized::add(x, c)`` with a Python number c (timm's ``x + eps``) -> float ops on x's grid.

    torch adds c rounded to x's grid: it shifts x's zero point by round(c/s) and keeps its integers
    when that stays in range (the float x + round(c/s)·s is then exact), else it requantizes that sum
    to new qparams. The output qparams come from torch's own kernel on a probe with x's (s, zero
    point), read from x's producer (a quantized module or a QDQ already in place, through layout
    ops and pass-through modules that keep their input's grid)."""
    x, c = (node.args[0], node.args[1]) if isinstance(node.args[1], int | float) else node.args[::-1]
    if c == 0:  # `total = 0; total += branch`: torch returns x's own integers and qparams
        node.replace_all_uses_with(x)
        gm.graph.erase_node(node)
        return
    source = x
    while isinstance(source, fx.Node) and (
        (source.op == "call_method" and source.target in _SAME_GRID_METHODS)
        or (
            source.op == "call_module"
            and isinstance(gm.get_submodule(str(source.target)), _SAME_GRID_MODULES)
        )
    ):
        source = source.args[0]  # a layout op or a pass-through module keeps its input's qparams
    producer = (
        gm.get_submodule(str(source.target))
        if isinstance(source, fx.Node) and source.op == "call_module"
        else None
    )
    scale, zero_point = getattr(producer, "scale", None), getattr(producer, "zero_point", None)
    if scale is None or zero_point is None:
        raise QtkError(
            f"quantized::add of a tensor and the number {c}: the tensor's qparams are not known at "
            f"{getattr(source, 'name', source)!r}; keep that op in float (StaticQuantConfig.skip_modules)"
        )
    probe = torch.quantize_per_tensor(torch.zeros(1), float(scale), int(zero_point), torch.quint8)
    out = torch.ops.quantized.add(probe, c)
    with gm.graph.inserting_before(node):  # torch adds c rounded to x's grid, round(c/s)·s
        added = gm.graph.call_function(operator.add, (x, round(c / float(scale)) * float(scale)))
    # on torch's output grid: within the range the same integers with a shifted zero point (the QDQ
    # is exact there, and keeps the tensor integer for ONNX Runtime's fusions), beyond it requantized
    replacement = add_qdq(added, added, out.q_scale(), out.q_zero_point(), torch.quint8)
    node.replace_all_uses_with(replacement)
    gm.graph.erase_node(node)
