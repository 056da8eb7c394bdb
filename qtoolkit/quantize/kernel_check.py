"""Refuse torch INT8 engines whose kernels are wrong on this CPU instead of reporting garbage.

torch's qnnpack engine has been measured returning garbage (0% top-1) for a mobile network on
these x86 machines while the same qparams simulated in float were fine. Before a model quantized
for a checked engine is evaluated, its INT8 outputs y on one calibration batch are compared with
its own QDQ float simulation r (:func:`qtoolkit.export.to_reference`, the same integer weights and
qparams):  SQNR = 10·log10(Σ r² / Σ (y − r)²). Correct kernels differ from r only by accumulator
rounding (tens of dB); below ``min_sqnr_db`` the engine is refused with a QtkError.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.runtime.torch_runner import call_model

# Engines whose kernels are verified on every quantization (x86/fbgemm are the reference path).
CHECKED_BACKENDS = frozenset({"qnnpack"})
MIN_SQNR_DB = 15.0


def kernel_sqnr_db(int8_model: nn.Module, batch: Any) -> float:
    """SQNR (dB) of ``int8_model``'s output against its QDQ float simulation on ``batch``."""
    from qtoolkit.export.reference import to_reference

    with torch.no_grad():
        expected = call_model(to_reference(int8_model), batch).float()
        got = call_model(int8_model, batch).float()
    noise = float(((got - expected).double() ** 2).sum())
    signal = float((expected.double() ** 2).sum())
    return math.inf if noise == 0.0 else 10.0 * math.log10(max(signal, 1e-30) / noise)


def verify_int8_kernels(
    int8_model: nn.Module, batch: Any, backend: str, min_sqnr_db: float = MIN_SQNR_DB
) -> float | None:
    """Raise QtkError when ``backend``'s kernels disagree with the simulation; None if unchecked."""
    if backend not in CHECKED_BACKENDS:
        return None
    try:
        sqnr = kernel_sqnr_db(int8_model, batch)
    except QtkError as error:  # no float simulation for some module: cannot check, say so
        warnings.warn(
            f"could not verify torch's {backend} INT8 kernels ({error}); treat its accuracy with care",
            stacklevel=2,
        )
        return None
    if not sqnr >= min_sqnr_db:
        raise QtkError(
            f"torch's {backend} INT8 kernels disagree with the model's own INT8 simulation on this CPU "
            f"(SQNR {sqnr:.1f} dB < {min_sqnr_db} dB): its accuracy would be garbage; use backend: x86"
        )
    return sqnr


# ONNX op types whose parity reference is the QDQ simulation, not torch's kernels (read by
# qtoolkit.evaluate.parity): set on an INT8 model whose torch kernels do not compute the INT8 math.
SIMULATED_OPS_ATTR = "qtk_simulated_ops"
_CONVS = (nnq.Conv1d, nnq.Conv2d, nnq.Conv3d)  # torch.ao.nn.intrinsic ConvReLU*d subclass these


def _exact_conv(module: nn.Module, qx: torch.Tensor) -> torch.Tensor:
    """The INT8 math of a quantized conv: Σ (x−z_x)·s_x · w, plus bias, (ReLU,) requantized."""
    conv = (F.conv1d, F.conv2d, F.conv3d)[qx.dim() - 3]
    weight, bias = module.weight().dequantize(), module.bias()
    y = conv(qx.dequantize(), weight, bias, module.stride, module.padding, module.dilation, module.groups)
    if "ReLU" in type(module).__name__:
        y = F.relu(y)
    return torch.quantize_per_tensor(y, float(module.scale), int(module.zero_point), qx.dtype).int_repr()


def saturating_depthwise_convs(int8_model: nn.Module, batch: Any) -> list[str]:
    """Depthwise convs whose torch INT8 output misses the exact INT8 math by more than 1 LSB on ``batch``.

    torch's x86/fbgemm depthwise kernel (measured: from 128 channels up, torch 2.14, VNNI or not)
    adds u8·s8 products in pairs into int16 with saturation: with activations and weights near full
    range, 255·127·2 > 32767, so those outputs are clipped where onnxruntime's kernels compute the
    exact sum. Other convs and Linear layers do not (all-255 inputs and all-127 weights give the
    exact result)."""
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:  # None: output kept
            outputs.setdefault(name, (args[0], out))

        return hook

    hooks = [
        module.register_forward_hook(keep(name))
        for name, module in int8_model.named_modules()
        if isinstance(module, _CONVS) and module.groups > 1 and module.groups == module.in_channels
    ]
    try:
        with torch.no_grad():
            call_model(int8_model, batch)
    finally:
        for hook in hooks:
            hook.remove()
    saturated = []
    for name, (qx, out) in outputs.items():
        exact = _exact_conv(int8_model.get_submodule(name), qx)
        if (out.int_repr().int() - exact.int()).abs().max() > 1:
            saturated.append(name)
    return saturated


def flag_saturating_depthwise_convs(int8_model: nn.Module, batch: Any) -> list[str]:
    """:func:`saturating_depthwise_convs` on ``batch``; when there are any, mark ``int8_model`` so that
    parity checks Conv against the exact QDQ simulation, and say so in one warning."""
    saturated = saturating_depthwise_convs(int8_model, batch)
    if saturated:
        setattr(int8_model, SIMULATED_OPS_ATTR, {*getattr(int8_model, SIMULATED_OPS_ATTR, ()), "Conv"})
        named = ", ".join(saturated[:3]) + (f" and {len(saturated) - 3} more" if len(saturated) > 3 else "")
        warnings.warn(
            f"torch's depthwise INT8 conv kernel saturates (int16 pair sums) in {named} on the calibration "
            "data: torch's INT8 outputs there are not the INT8 math onnxruntime computes, so parity is "
            "checked against the exact QDQ simulation (details['torch_saturated_convs'] names them all; "
            "ObserverSpec(reduce_range=True) keeps torch exact, with 7-bit activations)",
            stacklevel=3,
        )
    return saturated
