"""QConfigs built by hand from explicit integer ranges, for QAT (fake-quant) and for eager PTQ.

Affine quantization of x with scale s and zero point z onto the integer range [q_min, q_max]:

    q = clamp(round(x / s) + z, q_min, q_max),      x_hat = (q - z) * s

Weights: per output channel c, symmetric (z = 0), s_c = max|W_c| / ((q_max - q_min) / 2), with
[q_min, q_max] = [-2^(b-1), 2^(b-1) - 1] stored as qint8 (b = 4 gives -8..7). Activations:
per tensor, affine, quint8 [0, 2^a - 1], halved to [0, 2^(a-1) - 1] with ``reduce_range`` (CPUs
without VNNI saturate u8*s8 pairs in 16-bit otherwise). Moving-average observers use
min_t = (1 - c) min_{t-1} + c min(x_t).

QAT uses plain ``FakeQuantize`` (torch.ao's ``version=0`` style): the fused
``FusedMovingAvgObsFakeQuantize`` of the default qconfig crashes under ``torch.autocast``.
The integer range is computed here and the observer gets ``reduce_range=False``, because torch
halves a custom range inside the observer but not inside ``FakeQuantize`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    QConfig,
)

from qtoolkit.errors import QtkError


@dataclass(frozen=True)
class QuantRanges:
    weight_min: int
    weight_max: int
    act_min: int
    act_max: int


def quant_ranges(weight_bits: int, activation_bits: int, reduce_range: bool) -> QuantRanges:
    """Integer ranges for ``weight_bits``-bit symmetric weights and ``activation_bits``-bit activations."""
    if not 2 <= weight_bits <= 8:
        raise QtkError(f"weight_bits={weight_bits} is not supported; use 2..8 (stored as qint8)")
    if not 2 <= activation_bits <= 8:
        raise QtkError(f"activation_bits={activation_bits} is not supported; use 2..8 (stored as quint8)")
    act_bits = activation_bits - 1 if reduce_range else activation_bits
    return QuantRanges(-(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1, 0, 2**act_bits - 1)


def qat_qconfig(
    weight_bits: int = 8,
    activation_bits: int = 8,
    *,
    reduce_range: bool = False,
    per_channel: bool = True,
    averaging_constant: float = 0.01,
) -> QConfig:
    """Fake-quant qconfig: moving-average observers, per-channel symmetric weights."""
    r = quant_ranges(weight_bits, activation_bits, reduce_range)
    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=r.act_min,
        quant_max=r.act_max,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=False,
        averaging_constant=averaging_constant,
    )
    if per_channel:
        weight = FakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver,
            quant_min=r.weight_min,
            quant_max=r.weight_max,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
            reduce_range=False,
        )
    else:
        weight = FakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver,
            quant_min=r.weight_min,
            quant_max=r.weight_max,
            dtype=torch.qint8,
            qscheme=torch.per_tensor_symmetric,
            reduce_range=False,
        )
    return QConfig(activation=activation, weight=weight)
