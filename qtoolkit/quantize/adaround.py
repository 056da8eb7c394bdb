"""AdaRound-style learned rounding (Nagel et al. 2020), layer by layer on calibration data.

For a conv/linear layer with per-channel weight scale s (the qconfig's weight observer, kept FIXED
from here on) each weight is rounded down or up, w_q = s · clamp(⌊w/s⌋ + h, q_min, q_max) with
h ∈ {0, 1} chosen to minimise the layer's output error. h is relaxed to the rectified sigmoid
h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1) (ζ = 1.1, γ = −0.1), initialised so that h = w/s − ⌊w/s⌋
(nearest-like), and V is trained with Adam on

    L(V) = E_{batch, positions} Σ_c (act(W̃x + b) − act(Wx + b))²_c / E₀  +  λ · mean_w (1 − |2h(V) − 1|^β)

where act is the layer's following ReLU/ReLU6 when it has one, x the layer's input in the model whose
earlier layers are already rounded, W̃ the soft-rounded weight, and E₀ the error of nearest rounding
(so one λ suits every layer's output scale: λ = 1 was best on correlated test inputs, from 0.01, 0.1,
1 and lr 0.01, 0.05). With white (uncorrelated) inputs nearest rounding is already optimal; AdaRound
gains from the correlations real activations have. The regulariser is off for
the first ``warmup`` share of the iterations, then β is annealed linearly from 20 to 2, which drives
h to 0 or 1. Finally h = [V ≥ 0] and the float weight is set to s · q: it lies exactly on the grid, and
a fixed-scale weight observer (:class:`FixedScaleWeightObserver`) makes ``convert`` reproduce q.

Runs on the CPU; ``seconds`` bounds the whole pass: layers not reached in time keep nearest rounding
(named in the log). The random minibatches come from a generator seeded with ``seed``, so a run that
finishes within its budget is repeatable.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm.auto import tqdm

from qtoolkit.errors import QtkError
from qtoolkit.quantize.algorithms import PassContext, register_pass
from qtoolkit.quantize.qconfig import PER_CHANNEL_SCHEMES
from qtoolkit.runtime.batches import first_rows, row_count
from qtoolkit.runtime.torch_runner import call_model

_ZETA, _GAMMA = 1.1, -0.1
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


@dataclass(frozen=True)
class AdaRoundConfig:
    """Learned rounding settings (recipe ``quantize.adaround``)."""

    iterations: int = 300  # optimisation steps per layer
    seconds: float = 900.0  # budget for all layers; later layers keep nearest rounding
    samples: int = 32  # calibration images whose layer inputs are stored
    batch_size: int = 8  # images per step
    lr: float = 0.05
    reg_weight: float = 1.0
    warmup: float = 0.2  # share of iterations without the rounding regulariser
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.iterations, self.samples, self.batch_size) < 1 or not 0 < self.seconds < math.inf:
            raise QtkError(
                "adaround: iterations, samples, batch_size and seconds must be positive and finite"
            )
        if not 0.0 <= self.warmup < 1.0:
            raise QtkError(f"adaround.warmup must be in [0, 1), not {self.warmup}")


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)


def _apply(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, module.bias)
    return module._conv_forward(x, weight, module.bias)


class _Stop(Exception):
    """Raised by the capture hook: nothing after the layer is needed."""


def _layer_inputs(model: nn.Module, module: nn.Module, batches: list[Any]) -> torch.Tensor:
    """``module``'s input on ``batches`` (the forward pass stops at the layer)."""
    captured: list[torch.Tensor] = []

    def capture(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(capture)
    try:
        for batch in batches:
            with contextlib.suppress(_Stop):
                call_model(model, batch)
    finally:
        handle.remove()
    return torch.cat(captured)


def learn_rounding(
    module: nn.Module,
    inputs: torch.Tensor,
    scale: torch.Tensor,
    qmin: int,
    qmax: int,
    config: AdaRoundConfig,
    activation: nn.Module | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Learned integer weights q (same shape as the weight) of one layer (module docstring)."""
    act = activation or nn.Identity()
    weight = module.weight.detach()
    s = scale.view((-1,) + (1,) * (weight.dim() - 1)) if scale.numel() > 1 else scale
    floor = torch.floor(weight / s)
    rest = (weight / s - floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=config.lr)
    with torch.no_grad():
        targets = torch.cat([act(_apply(module, chunk, weight)) for chunk in inputs.split(config.batch_size)])
        nearest = s * torch.clamp(torch.round(weight / s), qmin, qmax)
        channel = targets.dim() - 1 if isinstance(module, nn.Linear) else 1
        sample = inputs[: config.batch_size * 4]
        reference = (act(_apply(module, sample, nearest)) - targets[: len(sample)]).pow(2).sum(channel).mean()
        reference = reference.clamp_min(1e-12)  # the loss is measured relative to nearest rounding's
    warm = int(config.warmup * config.iterations)
    for step in range(config.iterations):
        pick = torch.randint(len(inputs), (min(config.batch_size, len(inputs)),), generator=generator)
        h = _rectified_sigmoid(v)
        soft = s * torch.clamp(floor + h, qmin, qmax)
        out = act(_apply(module, inputs[pick], soft))
        loss = (out - targets[pick]).pow(2).sum(channel).mean() / reference
        if step >= warm:
            progress = (step - warm) / max(1, config.iterations - warm)
            beta = 20.0 + (2.0 - 20.0) * progress
            loss = loss + config.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return torch.clamp(floor + (v.detach() >= 0).float(), qmin, qmax)


def _following_activation(gm: fx.GraphModule, name: str) -> nn.Module | None:
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == name and len(node.users) == 1:
            user = next(iter(node.users))
            if user.op == "call_module" and isinstance(gm.get_submodule(user.target), _ACTIVATIONS):
                return gm.get_submodule(user.target)
    return None


@register_pass("adaround", lambda config: getattr(config, "adaround", None) is not None)
def adaround(gm: fx.GraphModule, context: PassContext, config: object) -> list[str]:
    """Learn the rounding of every (not skipped) conv/linear layer of ``gm``, in graph order."""
    settings: AdaRoundConfig = config.adaround  # type: ignore[attr-defined]
    if getattr(config.observers, "weight", "per_channel") not in PER_CHANNEL_SCHEMES:  # type: ignore[attr-defined]
        raise QtkError(
            "adaround needs per-channel weights (quantize.weight_observer: per_channel or mse_per_channel)"
        )
    images, batches = 0, []
    for batch in context.batches:
        batches.append(first_rows(batch, settings.samples - images))
        images += row_count(batches[-1])
        if images >= settings.samples:
            break
    generator = torch.Generator().manual_seed(settings.seed)
    modules = context.weighted_modules(gm)
    done, start = [], time.monotonic()
    bar = tqdm(modules.items(), desc="adaround", unit="layer", leave=False)
    for name, module in bar:
        if time.monotonic() - start > settings.seconds:
            context.log["adaround_out_of_time"] = [n for n in modules if n not in done]
            break
        scale, _, qmin, qmax = context.weight_qparams(name, module.weight)
        inputs = _layer_inputs(gm, module, batches)
        with torch.enable_grad():
            q = learn_rounding(
                module, inputs, scale, qmin, qmax, settings, _following_activation(gm, name), generator
            )
        s = scale.view((-1,) + (1,) * (q.dim() - 1)) if scale.numel() > 1 else scale
        module.weight.copy_(q * s)
        context.fixed_scales[name] = scale
        context.learned[name] = q.to(torch.int8)
        done.append(name)
        bar.set_postfix(elapsed=f"{time.monotonic() - start:.0f}s")
    return done
