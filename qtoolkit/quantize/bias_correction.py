"""Empirical bias correction (Nagel et al. 2019; NNCF's "fast bias correction").

Rounding the weights W to W_q shifts each output channel's mean: for a conv/linear layer with input
x, E[W_q x] − E[W x] = E[(W_q − W) x] ≠ 0 in general (depthwise convs with few taps are the worst).
Measured on the calibration batches, with x the layer's input in the float model and the mean taken
over batch and spatial positions per output channel c,

    δ_c = mean( (W_q − W) ⊛ x )_c,     b_c ← b_c − δ_c,

so that the quantized layer's output mean matches the float one. The corrected float bias is what
``convert`` then quantizes to int32 (scale s_x · s_w). W_q is the weight exactly as ``convert`` will
round it (the qconfig's weight observer, or AdaRound's learned integers on their fixed grid). One
pass over the calibration batches with a forward hook per layer computes all δ at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from qtoolkit.quantize.algorithms import PassContext, register_pass
from qtoolkit.runtime.torch_runner import call_model

_FUNCTIONS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def _error_output(module: nn.Module, x: torch.Tensor, delta_weight: torch.Tensor) -> torch.Tensor:
    """(W_q − W) applied to ``x`` as the layer applies W (no bias)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, delta_weight)
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    else:
        padding = module.padding
    conv = _FUNCTIONS[type(module)]
    return conv(x, delta_weight, None, module.stride, padding, module.dilation, module.groups)


def mean_shift(model: nn.Module, context: PassContext) -> dict[str, torch.Tensor]:
    """δ per output channel of every (not skipped) conv/linear layer of ``model`` (module docstring)."""
    modules = context.weighted_modules(model)
    deltas = {name: context.quantized_weight(name, m.weight) - m.weight for name, m in modules.items()}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            error = _error_output(module, args[0], deltas[name])
            channel = error.dim() - 1 if isinstance(module, nn.Linear) else 1
            flat = error.movedim(channel, -1).reshape(-1, error.shape[channel]).double()
            sums[name] = sums.get(name, 0) + flat.sum(0)
            counts[name] = counts.get(name, 0) + flat.shape[0]

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            for batch in context.batches:
                call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (sums[name] / counts[name]).float() for name in sums}


@register_pass("bias_correction", lambda config: bool(getattr(config, "bias_correction", False)))
def correct_bias(gm: fx.GraphModule, context: PassContext, config: object) -> list[str]:
    """Subtract each layer's mean shift from its bias (adding a zero bias where there was none)."""
    shifts = mean_shift(gm, context)
    for name, delta in shifts.items():
        module = gm.get_submodule(name)
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(delta))
        module.bias.sub_(delta)
    return sorted(shifts)
