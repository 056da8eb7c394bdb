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
