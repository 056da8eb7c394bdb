"""Cross-layer equalization (Nagel et al. 2019) of conv → clamp → conv pairs, ReLU6-aware.

For a pair y = W₁x + b₁, z = W₂·act(y) with a positively homogeneous act (ReLU: act(y / s) =
act(y) / s for s > 0), scaling channel i by s_i leaves z unchanged:

    W₁[i] ← W₁[i] / s_i,   b₁[i] ← b₁[i] / s_i,   W₂[:, i] ← W₂[:, i] · s_i.

With r₁_i = max|W₁[i]| and r₂_i = max|W₂[:, i]|, s_i = √(r₁_i / r₂_i) makes both ranges √(r₁_i r₂_i):
the per-tensor (or per-row) weight grids of W₂ stop being dominated by a few input channels. Between
the two convs only channel-wise, scale-commuting modules are allowed (ReLU, ReLU6/Hardtanh(0, c),
zero padding, identity, dropout). A depthwise W₂ scales its output channel i instead of a column.

ReLU6 clamps at c = 6, which is not homogeneous: clamp(y/s, 0, c) = clamp(y, 0, c)/s holds only where
neither side clamps, i.e. for y ≤ c and y ≤ c·s. So each channel's pre-activation maximum m_i is
measured on the calibration batches: a channel that reached the clamp (m_i > c) keeps s_i = 1, and
the others are limited to s_i ≥ m_i / c (the scaled channel may not reach the clamp). The float
outputs are then unchanged on every calibration input (and on any input whose pre-activations stay
in the calibrated range).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx, nn

from qtoolkit.quantize.algorithms import PassContext, register_pass
from qtoolkit.runtime.torch_runner import call_model

# Modules between the two convs that commute with a positive per-channel scale: name -> clamp top.
_PASSTHROUGH: dict[type[nn.Module], object] = {
    nn.ReLU: lambda m: math.inf,
    nn.ReLU6: lambda m: 6.0,
    nn.Hardtanh: lambda m: m.max_val if m.min_val == 0 else None,
    nn.ZeroPad1d: lambda m: math.inf,
    nn.ZeroPad2d: lambda m: math.inf,
    nn.ZeroPad3d: lambda m: math.inf,
    nn.Identity: lambda m: math.inf,
    nn.Dropout: lambda m: math.inf,
}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_depthwise(conv: nn.Module) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def find_pairs(gm: fx.GraphModule, context: PassContext) -> list[tuple[str, str, float]]:
    """(first conv, second conv, clamp top) for every equalizable pair, in graph order."""
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(first := gm.get_submodule(node.target), _CONVS):
            continue
        if (first.groups != 1 and not _is_depthwise(first)) or first.bias is None:
            continue
        top, current = math.inf, node
        while len(current.users) == 1:
            following = next(iter(current.users))
            if following.op != "call_module" or following.args[0] is not current:
                break
            module = gm.get_submodule(following.target)
            if isinstance(module, _CONVS):
                fits = (
                    module.groups == 1 or _is_depthwise(module)
                ) and module.in_channels == first.out_channels
                if fits and not (context.skipped(node.target) or context.skipped(following.target)):
                    pairs.append((str(node.target), str(following.target), top))
                break
            rule = _PASSTHROUGH.get(type(module))
            bound = rule(module) if rule else None
            if bound is None:
                break
            top, current = min(top, bound), following
    return pairs


def _preactivation_max(gm: fx.GraphModule, names: list[str], batches: list[Any]) -> dict[str, torch.Tensor]:
    """Per-channel maximum of each named conv's output over the calibration batches."""
    maxima: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: object, output: torch.Tensor) -> None:
            dims = [d for d in range(output.dim()) if d != 1]
            m = output.amax(dim=dims)
            maxima[name] = torch.maximum(maxima[name], m) if name in maxima else m

        return record

    handles = [gm.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for batch in batches:
            call_model(gm, batch)
    finally:
        for handle in handles:
            handle.remove()
    return maxima


def _column_range(second: nn.Module) -> torch.Tensor:
    w = second.weight.detach()
    if _is_depthwise(second):
        return w.abs().flatten(1).amax(1)
    return w.abs().transpose(0, 1).flatten(1).amax(1)


def equalize_pair(first: nn.Module, second: nn.Module, top: float, maximum: torch.Tensor | None) -> float:
    """Rescale one pair in place (module docstring); returns max/min of r₂ after / before, as a ratio."""
    r1 = first.weight.detach().abs().flatten(1).amax(1)
    r2 = _column_range(second)
    before = (r2.max() / r2.min().clamp_min(1e-12)).item()
    valid = (r1 > 0) & (r2 > 0)
    scale = torch.where(valid, torch.sqrt(r1 / r2.clamp_min(1e-12)), torch.ones_like(r1))
    if math.isfinite(top):
        assert maximum is not None
        reached = maximum > top
        scale = torch.where(reached, torch.ones_like(scale), torch.maximum(scale, maximum.clamp_min(0) / top))
    shape = (-1,) + (1,) * (first.weight.dim() - 1)
    first.weight.mul_(1 / scale.view(shape))
    first.bias.mul_(1 / scale)
    if _is_depthwise(second):
        second.weight.mul_(scale.view((-1,) + (1,) * (second.weight.dim() - 1)))
    else:
        second.weight.mul_(scale.view((1, -1) + (1,) * (second.weight.dim() - 2)))
    r2 = _column_range(second)
    return (r2.max() / r2.min().clamp_min(1e-12)).item() / before


@register_pass("equalize", lambda config: bool(getattr(config, "equalize", False)))
def equalize(gm: fx.GraphModule, context: PassContext, config: object) -> list[str]:
    """Equalize every conv → clamp → conv pair of ``gm`` in place; returns 'first->second' names."""
    pairs = find_pairs(gm, context)
    clamped = sorted({first for first, _, top in pairs if math.isfinite(top)})
    maxima = _preactivation_max(gm, clamped, context.batches) if clamped else {}
    done = []
    for first, second, top in pairs:
        equalize_pair(gm.get_submodule(first), gm.get_submodule(second), top, maxima.get(first))
        done.append(f"{first}->{second}")
    return done
