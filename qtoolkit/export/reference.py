"""Turn torch's converted INT8 model into an equivalent float model with frozen fake-quant ops.

Stock torch cannot export ``quantized::conv2d`` & co. through the dynamo exporter, but it exports
``torch.fake_quantize_per_*_affine`` with constant qparams as clean QuantizeLinear/DequantizeLinear
pairs. So we rebuild torch's INT8 model in float, keeping *its* numbers: every quantized module
becomes ``float op on dequantized INT8 weights -> fake-quant to the module's output (scale, zp)``.
Because the qparams and integer weights are read from the converted model (not re-derived from
observers), the exported graph computes what torch's INT8 kernels compute, up to rounding of
accumulators (parity within 1 LSB). BatchNorm is already folded and ReLU fused by torch's convert.

Works on eager-mode converted models (QuantStub/DeQuantStub models such as torchvision's
quantizable zoo) and on FX-mode converted ``GraphModule``s (``convert_fx`` output).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.ao.quantization.fx._decomposed  # registers torch.ops.quantized_decomposed
import torch.nn.functional as F
from torch import fx, nn

from qtoolkit.errors import QtkError
from qtoolkit.export.fixed_qparams import requantize_fixed_qparams_ops
from qtoolkit.export.scalar_ops import add_scalar

# torch quantized dtype -> (plain integer dtype, full range). Full range: torch's kernels saturate
# there, whatever range (e.g. reduce_range) the observer used to choose the scale.
_QDTYPES = {torch.quint8: (torch.uint8, 0, 255), torch.qint8: (torch.int8, -128, 127)}
_decomposed = torch.ops.quantized_decomposed


def plain_dtype(dtype: torch.dtype) -> tuple[torch.dtype, int, int]:
    """(integer dtype, qmin, qmax) of a torch quantized dtype."""
    if dtype not in _QDTYPES:
        raise QtkError(f"quantized dtype {dtype} is not supported by the ONNX export (use quint8 or qint8)")
    return _QDTYPES[dtype]


class FixedQDQ(nn.Module):
    """Quantize-dequantize with frozen qparams.

    y = (clamp(round_half_even(x / scale) + zero_point, qmin, qmax) - zero_point) * scale,
    written with torch's ``quantized_decomposed`` ops, which the dynamo exporter turns into
    QuantizeLinear -> DequantizeLinear (``fake_quantize_*`` has no fake-tensor kernel in torch.export).
    """

    def __init__(self, scale: float, zero_point: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.scale = float(scale)
        self.zero_point = int(zero_point)
        self.dtype = dtype
        self.int_dtype, self.qmin, self.qmax = plain_dtype(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.scale, self.zero_point, self.qmin, self.qmax, self.int_dtype)
        return _decomposed.dequantize_per_tensor(_decomposed.quantize_per_tensor(x, *args), *args)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}, dtype={self.dtype}"


class QDQWeight(nn.Module):
    """torch's INT8 weight, stored as int8, dequantized in the graph: W = (W_int8 - zp) * scale.

    Exports as an INT8 initializer feeding DequantizeLinear (per-channel along ``axis``, or
    per-tensor). Weights keep torch's stored values, e.g. -8..7 for 4-bit weights.
    """

    def __init__(self, qweight: torch.Tensor) -> None:
        super().__init__()
        if qweight.dtype != torch.qint8:
            raise QtkError(f"weights of dtype {qweight.dtype} cannot be exported; use qint8 weights")
        self.register_buffer("int_weight", qweight.int_repr().clone())
        if qweight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            self.axis: int | None = qweight.q_per_channel_axis()
            self.register_buffer("scales", qweight.q_per_channel_scales().float())
            self.register_buffer("zero_points", qweight.q_per_channel_zero_points().to(torch.int8))
        else:
            self.axis = None
            self.scale = float(qweight.q_scale())
            self.zero_point = int(qweight.q_zero_point())

    def forward(self) -> torch.Tensor:
        if self.axis is None:
            return _decomposed.dequantize_per_tensor(
                self.int_weight, self.scale, self.zero_point, -128, 127, torch.int8
            )
        return _decomposed.dequantize_per_channel(
            self.int_weight, self.scales, self.zero_points, self.axis, -128, 127, torch.int8
        )

    @property
    def weight(self) -> torch.Tensor:
        return self.forward()


class QDQConv(nn.Module):
    """Reference for nnq.Conv{1,2,3}d / nniq.ConvReLU*d: conv(x, DQ(W_int8)) [+ relu] -> QDQ(out)."""

    def __init__(self, qconv: nn.Module, relu: bool) -> None:
        super().__init__()
        if getattr(qconv, "padding_mode", "zeros") != "zeros":
            raise QtkError(
                f"{type(qconv).__name__} with padding_mode={qconv.padding_mode} cannot be exported"
            )
        self.qweight = QDQWeight(qconv.weight())
        bias = qconv.bias()
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[self.qweight.int_weight.dim() - 2]
        self.stride, self.padding = qconv.stride, qconv.padding
        self.dilation, self.groups = qconv.dilation, qconv.groups
        self.relu = relu
        self.out = FixedQDQ(qconv.scale, qconv.zero_point, torch.quint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x, self.qweight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.out(F.relu(y) if self.relu else y)


class QDQLinear(nn.Module):
    """Reference for nnq.Linear / nniq.LinearReLU: linear(x, DQ(W_int8)) [+ relu] -> QDQ(out)."""

    def __init__(self, qlinear: nn.Module, relu: bool) -> None:
        super().__init__()
        self.qweight = QDQWeight(qlinear.weight())
        bias = qlinear.bias()
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.relu = relu
        self.out = FixedQDQ(qlinear.scale, qlinear.zero_point, torch.quint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.qweight(), self.bias)
        return self.out(F.relu(y) if self.relu else y)


class QDQFunctional(nn.Module):
    """Reference for nnq.QFunctional (eager FloatFunctional after convert): op then QDQ(out)."""

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.out = FixedQDQ(scale, zero_point, torch.quint8)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out(x + y)

    def add_relu(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(x + y))

    def mul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out(x * y)

    def mul_relu(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(x * y))

    def add_scalar(self, x: torch.Tensor, y: float) -> torch.Tensor:
        return self.out(x + y)

    def mul_scalar(self, x: torch.Tensor, y: float) -> torch.Tensor:
        return self.out(x * y)

    def cat(self, tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return self.out(torch.cat(tensors, dim=dim))

    def matmul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out(torch.matmul(x, y))


class _ThenQDQ(nn.Module):
    """A float module followed by QDQ to the quantized module's output qparams."""

    def __init__(self, float_op: nn.Module, scale: float, zero_point: int) -> None:
        super().__init__()
        self.op = float_op
        self.out = FixedQDQ(scale, zero_point, torch.quint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.op(x))


class GlobalMean(nn.Module):
    """AdaptiveAvgPool(1) as a mean over the spatial axes: the same math, but it exports as one
    ReduceMean (torch.export decomposes some adaptive pools into as_strided/Gather index arithmetic,
    which onnxruntime cannot run in NHWC, so Transposes appear around it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _global_mean(m: nn.Module) -> nn.Module | None:
    return GlobalMean() if _is_global(m.output_size) else None


def _is_global(output_size: object) -> bool:
    size = output_size if isinstance(output_size, tuple | list) else (output_size,)
    return all(s == 1 for s in size)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Functional :class:`GlobalMean` (for ``F.adaptive_avg_pool*d(x, 1)`` calls in FX graphs)."""
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


# Functional adaptive average pools: with output size 1 they become one ReduceMean (see GlobalMean).
_ADAPTIVE_AVG_POOLS = frozenset(
    {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.adaptive_avg_pool1d,
     torch._C._nn.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool3d}
)  # fmt: skip


def _float_prelu(m: nnq.PReLU) -> nn.PReLU:
    """nn.PReLU with torch's quantized slopes, dequantized (the slope grid is part of the INT8 model)."""
    prelu = nn.PReLU(m.num_parameters)
    prelu.weight = nn.Parameter(m.weight.dequantize(), requires_grad=False)
    return prelu


def _quantize_stub(m: nnq.Quantize) -> nn.Module:
    return FixedQDQ(float(m.scale), int(m.zero_point), m.dtype)


# Quantized module type -> builder of its float reference. Exact types (no isinstance): intrinsic
# modules subclass the plain ones and need their own entry.
_MODULE_BUILDERS: dict[type, Callable[[nn.Module], nn.Module]] = {
    nnq.Quantize: _quantize_stub,
    nnq.DeQuantize: lambda m: nn.Identity(),
    nnq.Dropout: lambda m: nn.Identity(),
    nnq.Conv1d: lambda m: QDQConv(m, relu=False),
    nnq.Conv2d: lambda m: QDQConv(m, relu=False),
    nnq.Conv3d: lambda m: QDQConv(m, relu=False),
    nniq.ConvReLU1d: lambda m: QDQConv(m, relu=True),
    nniq.ConvReLU2d: lambda m: QDQConv(m, relu=True),
    nniq.ConvReLU3d: lambda m: QDQConv(m, relu=True),
    nnq.Linear: lambda m: QDQLinear(m, relu=False),
    nniq.LinearReLU: lambda m: QDQLinear(m, relu=True),
    nnq.QFunctional: lambda m: QDQFunctional(m.scale, m.zero_point),
    nnq.ReLU6: lambda m: nn.ReLU6(),
    nnq.Hardswish: lambda m: _ThenQDQ(nn.Hardswish(), m.scale, m.zero_point),
    nnq.ELU: lambda m: _ThenQDQ(nn.ELU(m.alpha), m.scale, m.zero_point),
    nnq.PReLU: lambda m: _ThenQDQ(_float_prelu(m), m.scale, m.zero_point),
    nnq.LeakyReLU: lambda m: _ThenQDQ(nn.LeakyReLU(m.negative_slope), m.scale, m.zero_point),
    nnq.Sigmoid: lambda m: _ThenQDQ(nn.Sigmoid(), m.output_scale, m.output_zero_point),
    nn.AdaptiveAvgPool1d: _global_mean,
    nn.AdaptiveAvgPool2d: _global_mean,
    nn.AdaptiveAvgPool3d: _global_mean,
    nnq.MaxPool2d: lambda m: nn.MaxPool2d(
        m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode
    ),
}
MODULE_BUILDERS = _MODULE_BUILDERS  # public: other modules register references (export/float_ops.py)


def _reference_of(module: nn.Module) -> nn.Module | None:
    """The float reference of a quantized module, or None when ``module`` is not quantized."""
    builder = _MODULE_BUILDERS.get(type(module))
    if builder is not None:
        return builder(module)
    if type(module).__module__.startswith("torch.ao.nn.") and ".quantized" in type(module).__module__:
        raise QtkError(
            f"quantized module {type(module).__name__} has no ONNX reference yet; "
            "keep it in float (qconfig None for that module) to export"
        )
    return None


def _swap_modules(root: nn.Module) -> None:
    for name, child in list(root.named_children()):
        reference = _reference_of(child)
        if reference is not None:
            setattr(root, name, reference)
        else:
            _swap_modules(child)


# torch.ops.quantized functional ops in FX-converted graphs: op name -> (float fn, index of scale arg).
_FX_FUNCTIONAL: dict[str, tuple[Callable[..., torch.Tensor], int]] = {
    "add": (operator.add, 2),
    "add_relu": (lambda a, b: F.relu(a + b), 2),
    "mul": (operator.mul, 2),
    "mul_relu": (lambda a, b: F.relu(a * b), 2),
    "add_scalar": (operator.add, 2),
    "mul_scalar": (operator.mul, 2),
    "hardswish": (F.hardswish, 1),
    "matmul": (torch.matmul, 2),
    "cat": (lambda tensors, dim: torch.cat(tensors, dim), 2),
}
# quantized op name -> float function of the op's own (args, kwargs); output qparams read by name
# (output_scale / output_zero_point). Filled by export/float_ops.py.
FX_FLOAT_OPS: dict[str, Callable[..., torch.Tensor]] = {}


def _attr_value(gm: fx.GraphModule, arg: object) -> object:
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = gm
        for part in str(arg.target).split("."):
            value = getattr(value, part)
        return value.item() if isinstance(value, torch.Tensor) else value
    return arg


def _float_op_then_qdq(
    gm: fx.GraphModule, node: fx.Node, fn: Callable[..., torch.Tensor], add_qdq: Callable[..., fx.Node]
) -> None:
    """``quantized::op(..., output_scale, output_zero_point)`` -> ``QDQ(fn(...))``."""
    schema = node.target._schema if hasattr(node.target, "_schema") else node.target.default._schema
    names = [a.name for a in schema.arguments]
    bound = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    scale, zero_point = (_attr_value(gm, bound.pop(k)) for k in ("output_scale", "output_zero_point"))
    with gm.graph.inserting_before(node):
        float_node = gm.graph.call_function(fn, (), bound)
    qdq = add_qdq(float_node, float_node, float(scale), int(zero_point), torch.quint8)
    node.replace_all_uses_with(qdq)
    gm.graph.erase_node(node)


def _scalar_form(node: fx.Node) -> bool:
    """A quantized binary op called as (tensor, number) / (number, tensor): no output qparams."""
    return len(node.args) == 2 and any(isinstance(a, int | float) for a in node.args)


def _rewrite_fx_graph(gm: fx.GraphModule) -> None:
    """Replace quantize/dequantize nodes and quantized functional ops in an FX-converted graph."""
    graph, counter = gm.graph, 0

    def add_qdq(
        before: fx.Node, source: fx.Node, scale: float, zero_point: int, dtype: torch.dtype
    ) -> fx.Node:
        nonlocal counter
        name = f"qtk_qdq_{counter}"
        counter += 1
        gm.add_submodule(name, FixedQDQ(scale, zero_point, dtype))
        with graph.inserting_after(before):
            return graph.call_module(name, (source,))

    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.quantize_per_tensor:
            scale, zero_point, dtype = (_attr_value(gm, a) for a in node.args[1:])  # [0]: may be a get_attr
            qdq = add_qdq(node, node.args[0], float(scale), int(zero_point), dtype)
            node.replace_all_uses_with(qdq)
            graph.erase_node(node)
        elif node.op == "call_function" and node.target in _ADAPTIVE_AVG_POOLS:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            if _is_global(size):  # torch.export decomposes some into as_strided/Gather index math
                node.target, node.args, node.kwargs = global_mean, (node.args[0],), {}
        elif node.op == "call_method" and node.target == "dequantize":
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif node.op == "call_function" and isinstance(
            node.target, torch._ops.OpOverloadPacket | torch._ops.OpOverload
        ):
            namespace, _, op_name = str(node.target).partition(".")
            op_name = op_name.split(".")[0]
            if namespace != "quantized":
                continue
            if op_name in FX_FLOAT_OPS:
                _float_op_then_qdq(gm, node, FX_FLOAT_OPS[op_name], add_qdq)
                continue
            if op_name in ("mul", "mul_scalar") and _scalar_form(node):
                # x·c with a Python number c: torch keeps x's integers and takes scale |c|·s (flipped
                # for c < 0), so the float product of the dequantized x is already on that grid
                node.target, node.kwargs = operator.mul, {}
                continue
            if op_name == "dropout" and not node.kwargs.get("training", False):
                node.replace_all_uses_with(node.args[0])  # eval: torch returns its input unchanged
                graph.erase_node(node)
                continue
            if op_name in ("add", "add_scalar") and _scalar_form(node):
                add_scalar(gm, node, add_qdq)
                continue
            if op_name not in _FX_FUNCTIONAL or _scalar_form(node):
                raise QtkError(
                    f"quantized op quantized::{op_name} has no ONNX reference yet; keep it in float"
                )
            fn, scale_index = _FX_FUNCTIONAL[op_name]
            scale, zero_point = (_attr_value(gm, a) for a in node.args[scale_index : scale_index + 2])
            with graph.inserting_before(node):
                float_node = graph.call_function(fn, tuple(node.args[:scale_index]))
            qdq = add_qdq(float_node, float_node, float(scale), int(zero_point), torch.quint8)
            node.replace_all_uses_with(qdq)
            graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()


def to_reference(int8_model: nn.Module) -> nn.Module:
    """Float model with frozen fake-quant that computes what ``int8_model`` (torch.ao convert output) does.

    ``int8_model`` is not modified. The result is in eval mode and exports with
    ``torch.onnx.export(..., dynamo=True)`` to a QDQ graph.
    """
    reference = copy.deepcopy(int8_model).eval()
    if isinstance(reference, fx.GraphModule):
        requantize_fixed_qparams_ops(reference, lambda s, zp: FixedQDQ(s, zp, torch.quint8))
        _rewrite_fx_graph(reference)
    _swap_modules(reference)
    top = _reference_of(reference)
    return (top if top is not None else reference).eval()
