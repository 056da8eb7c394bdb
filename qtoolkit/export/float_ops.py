"""Float references for quantized ops that ONNX Runtime runs in float between DequantizeLinear and
QuantizeLinear: normalisations (LayerNorm, GroupNorm, InstanceNorm, BatchNorm not folded into a
conv, e.g. DenseNet's BN after a concatenation) and softmax.

torch.ao quantizes these ops (its kernels dequantize, compute in float and requantize the output),
so their reference is exactly that: ``y = QDQ(op(x))`` with the op's float parameters and the
quantized module's output (scale, zero point). In the exported graph they are float islands
``DQ -> op -> Q`` with quantized neighbours; ORT has no integer kernel for them.

Registered into :mod:`qtoolkit.export.reference`'s module and FX-op registries at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import nn

from qtoolkit.export.reference import FX_FLOAT_OPS, MODULE_BUILDERS, FixedQDQ


class FloatThenQDQ(nn.Module):
    """``QDQ(fn(x, **params))``: a float op with frozen parameters, then the INT8 output grid."""

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        scale: float,
        zero_point: int,
        tensors: dict[str, torch.Tensor | None],
        **options: Any,
    ) -> None:
        super().__init__()
        self.fn, self.options = fn, options
        self.names = tuple(tensors)
        for name, tensor in tensors.items():  # frozen: buffers (initializers in the ONNX graph)
            self.register_buffer(name, None if tensor is None else tensor.detach().float().clone())
        self.out = FixedQDQ(float(scale), int(zero_point), torch.quint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fn(x, **{n: getattr(self, n) for n in self.names}, **self.options))


def _batch_norm(relu: bool) -> Callable[..., torch.Tensor]:
    def run(x: torch.Tensor, weight, bias, running_mean, running_var, eps: float) -> torch.Tensor:
        y = F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
        return F.relu(y) if relu else y

    return run


def _bn(m: nn.Module, relu: bool) -> nn.Module:
    tensors = {
        "weight": m.weight,
        "bias": m.bias,
        "running_mean": m.running_mean,
        "running_var": m.running_var,
    }
    return FloatThenQDQ(_batch_norm(relu), m.scale, m.zero_point, tensors, eps=m.eps)


def _layer_norm(x: torch.Tensor, weight, bias, normalized_shape, eps: float) -> torch.Tensor:
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


def _group_norm(x: torch.Tensor, weight, bias, num_groups: int, eps: float) -> torch.Tensor:
    return F.group_norm(x, num_groups, weight, bias, eps)


def _instance_norm(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    return F.instance_norm(x, weight=weight, bias=bias, eps=eps)


def _softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    return F.softmax(x, dim=dim)


def _norm_module(fn: Callable[..., torch.Tensor], *options: str) -> Callable[[nn.Module], nn.Module]:
    def build(m: nn.Module) -> nn.Module:
        kwargs = {name: getattr(m, name) for name in options}
        if "normalized_shape" in kwargs:
            kwargs["normalized_shape"] = tuple(kwargs["normalized_shape"])
        return FloatThenQDQ(fn, m.scale, m.zero_point, {"weight": m.weight, "bias": m.bias}, **kwargs)

    return build


# Quantized module type -> float reference (exact types, as in reference.MODULE_BUILDERS).
FLOAT_MODULE_BUILDERS: dict[type, Callable[[nn.Module], nn.Module]] = {
    nnq.LayerNorm: _norm_module(_layer_norm, "normalized_shape", "eps"),
    nnq.GroupNorm: _norm_module(_group_norm, "num_groups", "eps"),
    nnq.InstanceNorm1d: _norm_module(_instance_norm, "eps"),
    nnq.InstanceNorm2d: _norm_module(_instance_norm, "eps"),
    nnq.InstanceNorm3d: _norm_module(_instance_norm, "eps"),
    nnq.BatchNorm2d: lambda m: _bn(m, relu=False),
    nnq.BatchNorm3d: lambda m: _bn(m, relu=False),
    nniq.BNReLU2d: lambda m: _bn(m, relu=True),
    nniq.BNReLU3d: lambda m: _bn(m, relu=True),
    nnq.Softmax: lambda m: FloatThenQDQ(_softmax, m.scale, m.zero_point, {}, dim=m.dim),
}


def _bn_op(relu: bool) -> Callable[..., torch.Tensor]:
    def run(qx, weight, bias, mean, var, eps, output_scale=None, output_zero_point=None) -> torch.Tensor:
        return _batch_norm(relu)(qx, weight, bias, mean, var, eps)

    return run


# torch.ops.quantized op name -> float function taking the op's own arguments (output qparams ignored;
# reference.py reads them by name: output_scale / output_zero_point).
FLOAT_FX_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "layer_norm": lambda input, normalized_shape, weight=None, bias=None, eps=1e-5, **_: F.layer_norm(
        input, normalized_shape, weight, bias, eps
    ),
    "group_norm": lambda input, num_groups, weight=None, bias=None, eps=1e-5, **_: F.group_norm(
        input, num_groups, weight, bias, eps
    ),
    "instance_norm": lambda input, weight=None, bias=None, eps=1e-5, **_: F.instance_norm(
        input, weight=weight, bias=bias, eps=eps
    ),
    "batch_norm": _bn_op(relu=False),
    "batch_norm2d": _bn_op(relu=False),
    "batch_norm3d": _bn_op(relu=False),
    "batch_norm2d_relu": _bn_op(relu=True),
    "batch_norm3d_relu": _bn_op(relu=True),
    "softmax": lambda qx, dim, **_: F.softmax(qx, dim=dim),
}

MODULE_BUILDERS.update(FLOAT_MODULE_BUILDERS)
FX_FLOAT_OPS.update(FLOAT_FX_OPS)
