"""Post-training algorithms that edit the float model between canonicalization and ``prepare_fx``.

A registry (:data:`PASSES`, run in its order) of passes over the BatchNorm-folded float graph:

* ``equalize``: cross-layer equalization of conv → clamp → conv pairs (``equalization.py``);
* ``adaround``: learned up/down rounding of conv/linear weights, placed on the grid with fixed
  scales (``adaround.py``);
* ``bias_correction``: the mean output shift weight rounding causes, moved into the float bias
  (``bias_correction.py``).

BatchNorm is folded first (W' = W · γ/σ, b' = (b − μ) · γ/σ + β, exactly what torch.ao's FX fusion
does at prepare time), so each pass sees the weights the weight observer will see. The weight
quantizer used by the passes is the qconfig's own weight observer, so w_q = s · clamp(round(w / s))
with the same s that ``convert`` computes (or a fixed s where AdaRound placed the weights).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.ao import quantization as tq
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from qtoolkit.data.calibration import checked_batches

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class FixedScaleWeightObserver(PerChannelMinMaxObserver):
    """Per-channel symmetric weight observer that returns given scales (AdaRound's grid) unchanged."""

    def __init__(self, scale: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("fixed_scale", torch.as_tensor(scale if scale is not None else [1.0]).float())

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fixed_scale.clone(), torch.zeros_like(self.fixed_scale, dtype=torch.int64)


def fixed_scale_qconfig(qconfig: tq.QConfig, scale: torch.Tensor) -> tq.QConfig:
    """``qconfig`` with its weight observer replaced by one that returns ``scale`` (same grid)."""
    reference = qconfig.weight()
    weight = FixedScaleWeightObserver.with_args(
        scale=scale,
        dtype=reference.dtype,
        qscheme=torch.per_channel_symmetric,
        quant_min=reference.quant_min,
        quant_max=reference.quant_max,
    )
    return tq.QConfig(activation=qconfig.activation, weight=weight)


@dataclass
class PassContext:
    """What the passes share: calibration batches, the qconfig, fixed scales AdaRound chose."""

    batches: list[Any]  # model inputs: tensors, or tuples/dicts of them for several inputs
    qconfig: tq.QConfig
    skip: tuple[str, ...] = ()
    fixed_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # module name -> per-channel s
    learned: dict[str, torch.Tensor] = field(default_factory=dict)  # AdaRound's integers, by module
    log: dict[str, Any] = field(default_factory=dict)

    def skipped(self, name: str) -> bool:
        return any(name == s or name.startswith(f"{s}.") for s in self.skip)

    def weighted_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHTED) and not self.skipped(n)}

    def weight_qparams(self, name: str, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(scale, zero_point, q_min, q_max) that ``convert`` will use for ``weight``."""
        observer = self.qconfig.weight()
        if name in self.fixed_scales:
            scale = self.fixed_scales[name]
            return scale, torch.zeros_like(scale, dtype=torch.int32), observer.quant_min, observer.quant_max
        observer(weight.detach())
        scale, zero_point = observer.calculate_qparams()
        return scale.float(), zero_point.int(), observer.quant_min, observer.quant_max

    def quantized_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The weight as ``convert`` will round it (fake-quantized, float)."""
        scale, zero_point, qmin, qmax = self.weight_qparams(name, weight)
        if scale.numel() == 1:
            return torch.fake_quantize_per_tensor_affine(
                weight, float(scale), int(zero_point.reshape(-1)[0]), qmin, qmax
            )
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, qmin, qmax)


Pass = Callable[[fx.GraphModule, PassContext, Any], list[str]]


@dataclass(frozen=True)
class FloatPass:
    """One registered algorithm: whether the config enables it, and the pass itself."""

    enabled: Callable[[Any], bool]
    apply: Pass


PASSES: dict[str, FloatPass] = {}


def register_pass(name: str, enabled: Callable[[Any], bool]) -> Callable[[Pass], Pass]:
    def decorate(apply: Pass) -> Pass:
        PASSES[name] = FloatPass(enabled, apply)
        return apply

    return decorate


def enabled_passes(config: Any) -> list[str]:
    _load_passes()
    return [name for name, p in PASSES.items() if p.enabled(config)]


def _load_passes() -> None:
    # Registration order is the run order: equalize, then rounding, then the bias that depends on it.
    from qtoolkit.quantize import adaround, bias_correction, equalization  # noqa: F401


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """Conv-BN pairs folded into the conv (eval statistics), as torch.ao's FX fusion folds them."""
    from torch.fx.experimental.optimization import fuse

    return fuse(model.eval(), inplace=False)


def materialize(calibration: Iterable[object], limit: int | None = None, arity: int = 1) -> list[Any]:
    return list(itertools.islice(checked_batches(calibration, arity), limit))


def run_passes(
    model: nn.Module, config: Any, calibration: Iterable[object], qconfig: tq.QConfig, arity: int = 1
) -> tuple[fx.GraphModule, PassContext]:
    """Fold BN, then run every enabled pass in registry order; the context holds what they did."""
    names = enabled_passes(config)
    folded = fold_batchnorm(model)
    context = PassContext(materialize(calibration, arity=arity), qconfig, tuple(config.skip_modules))
    with torch.no_grad():
        for name in names:
            context.log[name] = PASSES[name].apply(folded, context, config)
    return folded, context
