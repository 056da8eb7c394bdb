"""Graph canonicalization and calibration rules that make FX static PTQ faithful on real networks.

1. ``canonicalize_for_fx``: models often subclass ``nn.Conv2d``/``nn.Linear`` and call
   ``F.conv2d(x, self.weight, self.bias, ...)`` in their own ``forward`` (e.g. TF-style "same"
   padding). FX traces through such modules, so torch.ao sees a *functional* conv whose weight is a
   plain attribute: BatchNorm is then not folded (it is quantized on its own, after the conv output
   was already rounded per tensor), and ReLU is not fused. This pass rewrites every
   ``conv{1,2,3}d``/``linear`` call on a module's own parameters into a call of a standard leaf
   module holding the same parameters, so torch.ao's Conv-BN(-ReLU) fusion and BN folding apply.
2. ``float_prelus``: torch.ao's quantized PReLU (fbgemm, torch 2.14) returns wrong values for
   positive inputs when the input and output grids differ (measured: 1.16 off a float output
   that the Q/DQ reference matches within 0.08), and with a None qconfig its lowering crashes. Each
   ``nn.PReLU`` is re-classed to :class:`FloatPReLU`, which FX traces into ``F.prelu``: torch.ao
   leaves it float between DQ and Q, and the export matches torch.
3. ``clamp_aware_observers``: an activation observer whose only consumer is a clamp (ReLU6,
   Hardtanh, ReLU, clamp) observes clamp(x, lo, hi) instead of x. The producer's INT8 output then
   spans only what survives the clamp, which equals fusing the clamp into the producer's requantize
   (saturation does the clamping); unclamped, a ReLU6 after a conv whose raw output spans [-40, 30]
   wastes most of the 256 levels on values the clamp discards. (onnxruntime's quantizer makes the
   same adjustment.) Clamping the observer's input changes nothing downstream: the clamp follows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.ao.quantization.observer import ObserverBase

# functional op -> builder of an equivalent leaf module from (owner module, normalized kwargs).
ModuleBuilder = Callable[[nn.Module, dict[str, Any]], nn.Module | None]


def _conv_builder(cls: type[nn.Module]) -> ModuleBuilder:
    def build(owner: nn.Module, kw: dict[str, Any]) -> nn.Module | None:
        weight, padding = kw["weight"], kw.get("padding", 0)
        if isinstance(padding, str):
            return None  # 'same'/'valid' strings: leave as is
        groups = kw.get("groups", 1)
        conv = cls(
            weight.shape[1] * groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=kw.get("stride", 1),
            padding=padding,
            dilation=kw.get("dilation", 1),
            groups=groups,
            bias=kw.get("bias") is not None,
        )
        conv.weight = weight
        if kw.get("bias") is not None:
            conv.bias = kw["bias"]
        return conv

    return build


def _linear_builder(owner: nn.Module, kw: dict[str, Any]) -> nn.Module:
    weight = kw["weight"]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=kw.get("bias") is not None)
    linear.weight = weight
    if kw.get("bias") is not None:
        linear.bias = kw["bias"]
    return linear


FUNCTIONAL_TO_MODULE: dict[Callable[..., Any], ModuleBuilder] = {
    F.conv1d: _conv_builder(nn.Conv1d),
    F.conv2d: _conv_builder(nn.Conv2d),
    F.conv3d: _conv_builder(nn.Conv3d),
    torch.conv1d: _conv_builder(nn.Conv1d),
    torch.conv2d: _conv_builder(nn.Conv2d),
    torch.conv3d: _conv_builder(nn.Conv3d),
    F.linear: _linear_builder,
}
_ARG_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _param_of(gm: fx.GraphModule, node: object) -> tuple[str, nn.Parameter] | None:
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    owner_path, _, attr = str(node.target).rpartition(".")
    value = getattr(gm.get_submodule(owner_path), attr, None)
    return (owner_path, value) if isinstance(value, nn.Parameter) else None


class FloatPReLU(nn.PReLU):
    """``nn.PReLU`` that FX traces through (not a torch.nn leaf), so it stays a float ``F.prelu``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight)


def reclass_modules(model: nn.Module, classes: dict[type[nn.Module], type[nn.Module]]) -> list[str]:
    """Re-class (in place) every module whose exact type is a key of ``classes`` to its value, a
    subclass adding no state (only ``forward`` differs); the names re-classed."""
    done = []
    for name, module in model.named_modules():
        subclass = classes.get(type(module))
        if subclass is not None:
            module.__class__ = subclass
            done.append(name or type(module).__name__)
    return done


def float_prelus(model: nn.Module) -> list[str]:
    """Re-class (in place) every ``nn.PReLU`` of ``model`` to :class:`FloatPReLU`; their names."""
    return reclass_modules(model, {nn.PReLU: FloatPReLU})


def canonicalize_for_fx(model: nn.Module) -> tuple[fx.GraphModule, list[str]]:
    """(traced model with functional conv/linear on own parameters as leaf modules, their paths)."""
    gm = fx.symbolic_trace(model)
    created = []
    for node in list(gm.graph.nodes):
        builder = FUNCTIONAL_TO_MODULE.get(node.target) if node.op == "call_function" else None
        if builder is None:
            continue
        kw = dict(zip(_ARG_NAMES, node.args, strict=False)) | dict(node.kwargs)
        weight, bias = _param_of(gm, kw.get("weight")), kw.get("bias")
        bias_param = _param_of(gm, bias) if bias is not None else None
        if weight is None or (bias is not None and bias_param is None):
            continue
        if any(isinstance(v, fx.Node) for k, v in kw.items() if k not in ("input", "weight", "bias")):
            continue  # stride/padding computed at run time
        owner_path, weight_param = weight
        module = builder(
            gm.get_submodule(owner_path),
            {**kw, "weight": weight_param, "bias": bias_param[1] if bias_param else None},
        )
        if module is None:
            continue
        owner = gm.get_submodule(owner_path)
        name = next(n for n in (f"qtk_{type(module).__name__.lower()}{i or ''}" for i in range(99))
                    if not hasattr(owner, n))  # fmt: skip
        owner.add_module(name, module)
        path = f"{owner_path}.{name}" if owner_path else name
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(path, (kw["input"],))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        created.append(path)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.train(model.training)  # a fresh GraphModule and the new modules start in train mode
    return gm, created


# Clamp-like ops: module type / function -> (lo, hi) of the clamp it applies.
CLAMP_MODULES: dict[type, Callable[[nn.Module], tuple[float, float]]] = {
    nn.ReLU6: lambda m: (0.0, 6.0),
    nn.ReLU: lambda m: (0.0, math.inf),
    nn.Hardtanh: lambda m: (float(m.min_val), float(m.max_val)),
}
CLAMP_FUNCTIONS: dict[Callable[..., Any], Callable[[fx.Node], tuple[float, float] | None]] = {
    F.relu6: lambda n: (0.0, 6.0),
    F.relu: lambda n: (0.0, math.inf),
    torch.relu: lambda n: (0.0, math.inf),
    F.hardtanh: lambda n: (float(n.kwargs.get("min_val", n.args[1] if len(n.args) > 1 else -1.0)),
                           float(n.kwargs.get("max_val", n.args[2] if len(n.args) > 2 else 1.0))),
}  # fmt: skip


class ClampInput:
    """Forward pre-hook of an observer: observe clamp(x, lo, hi) (module docstring, point 2)."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        lo = None if math.isinf(self.lo) else self.lo
        hi = None if math.isinf(self.hi) else self.hi
        return (args[0].clamp(lo, hi), *args[1:])


def _clamp_range(gm: fx.GraphModule, node: fx.Node) -> tuple[float, float] | None:
    if node.op == "call_module":
        rule = CLAMP_MODULES.get(type(gm.get_submodule(str(node.target))))
        return rule(gm.get_submodule(str(node.target))) if rule else None
    if node.op == "call_function" and node.target in CLAMP_FUNCTIONS:
        return CLAMP_FUNCTIONS[node.target](node)
    return None


def clamp_aware_observers(prepared: fx.GraphModule) -> list[str]:
    """Make observers whose only consumer is a clamp observe the clamped value; returns their names."""
    changed = []
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not isinstance(prepared.get_submodule(str(node.target)), ObserverBase):
            continue
        users = list(node.users)
        if len(users) != 1 or (bounds := _clamp_range(prepared, users[0])) is None:
            continue
        producer = node.args[0]
        if not isinstance(producer, fx.Node) or len(producer.users) != 1:
            continue
        observer = prepared.get_submodule(str(node.target))
        if getattr(observer, "_qtk_clamp", None) is None:
            observer._qtk_clamp = observer.register_forward_pre_hook(ClampInput(*bounds))
            changed.append(str(node.target))
    return changed


# Modules that run on a quantized tensor and keep its (scale, zero point): padding with zeros
# writes the zero point, which is exact. torch's convert leaves them between dequantize and
# quantize (its lowering list is fixed); with the shared observer the two qparams are equal.
GRID_PRESERVING_MODULES: tuple[type, ...] = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)


def run_grid_ops_on_int8(int8_model: nn.Module) -> list[str]:
    """Rewrite ``dequantize -> pad -> quantize(same qparams)`` into ``pad`` on the INT8 tensor."""
    if not isinstance(int8_model, fx.GraphModule):
        return []
    done = []
    for node in list(int8_model.graph.nodes):
        if node.op != "call_module" or not isinstance(
            int8_model.get_submodule(str(node.target)), GRID_PRESERVING_MODULES
        ):
            continue
        source, users = node.args[0], list(node.users)
        if not (isinstance(source, fx.Node) and source.op == "call_method" and source.target == "dequantize"):
            continue
        if len(users) != 1 or users[0].target is not torch.quantize_per_tensor:
            continue
        quantize = users[0]
        node.replace_input_with(source, source.args[0])
        quantize.replace_all_uses_with(node)
        int8_model.graph.erase_node(quantize)
        done.append(str(node.target))
    int8_model.graph.eliminate_dead_code()
    int8_model.recompile()
    return done


# Global average pools: module types whose output gets its own observer (``unshare_pool_observers``).
GLOBAL_POOL_MODULES: tuple[type, ...] = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def unshare_pool_observers(
    prepared: fx.GraphModule, make_observer: Callable[[], nn.Module]
) -> dict[str, nn.Module]:
    """Give each global average pool its own output observer instead of its input's.

    An average spans a far smaller range than its input (a ReLU6 map in [0, 6] pools to features
    of ~0.1–1): on the input's grid, which torch shares by default, the pooled features keep only a
    few levels. With its own qparams the pooled output is requantized onto a fine grid, as
    onnxruntime's quantizer does. Returns pool path -> its new observer; torch's convert still
    lowers the pool onto the input grid, so :func:`requantize_pools` applies the qparams after it.
    """
    changed: dict[str, nn.Module] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not isinstance(
            prepared.get_submodule(str(node.target)), GLOBAL_POOL_MODULES
        ):
            continue
        source, users = node.args[0], list(node.users)
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(users) == 1):
            continue
        out = users[0]
        if out.op != "call_module":
            continue
        observer_in, observer_out = (
            prepared.get_submodule(str(source.target)),
            prepared.get_submodule(str(out.target)),
        )
        if observer_out is observer_in and isinstance(observer_out, ObserverBase):
            observer = make_observer()
            setattr(prepared, str(out.target), observer)
            changed[str(node.target)] = observer
    return changed


def requantize_pools(int8_model: nn.Module, observers: dict[str, nn.Module]) -> list[str]:
    """In the converted graph: ``pool(q)`` -> ``quantize(pool(dequantize(q)), own qparams)``."""
    if not isinstance(int8_model, fx.GraphModule):
        return []
    done = []
    for node in list(int8_model.graph.nodes):
        observer = observers.get(str(node.target)) if node.op == "call_module" else None
        if observer is None:
            continue
        scale, zero_point = observer.calculate_qparams()
        graph = int8_model.graph
        with graph.inserting_before(node):
            dq = graph.call_method("dequantize", (node.args[0],))
        node.replace_input_with(node.args[0], dq)
        with graph.inserting_after(node):
            q = graph.call_function(
                torch.quantize_per_tensor, (node, float(scale), int(zero_point), observer.dtype)
            )
        node.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
        done.append(str(node.target))
    int8_model.recompile()
    return done
