"""SmoothQuant-style migration of activation outliers into Linear weights (for dynamic INT8).

Dynamic INT8 quantizes each Linear's input with one range for the whole tensor, so a few outlier
channels (BERT's LayerNorm and GELU outputs carry channels 10-50x wider than the rest) leave the
other channels a handful of levels. For a Linear y = W x + b, any positive per-input-channel
vector s gives the same y in float:

    y = (W · diag(s)) (x / s) + b,        s_j = max|x_j|^α / max_k |W_kj|^(1−α)

with max|x_j| measured on calibration batches (the largest |value| of input channel j over all
rows) and the weight maximum taken over every Linear that reads the same input tensor, so they
share one s (and one Mul in ONNX). α moves the difficulty: 0 leaves the activations alone, 1
flattens every input channel to range 1 and hands all of the spread to the weights, which are
quantized per output row and absorb it. (Xiao et al., "SmoothQuant", 2023; α = 0.5 there for
static per-tensor INT8; for per-row weights and per-tensor dynamic activations more migration pays.)

The division is an explicit ``x * (1/s)`` before each Linear (:class:`SmoothedLinear`): BERT's
post-LayerNorm outputs also feed residual adds, so the scale cannot fold into the LayerNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from qtoolkit.data.calibration import CalibrationReader, as_reader
from qtoolkit.errors import QtkError

__all__ = ["SmoothedLinear", "input_absmax", "smooth_linears", "smoothing_scale"]


class SmoothedLinear(nn.Module):
    """``linear(x * inv_scale)``: a Linear whose weight columns were multiplied by ``1 / inv_scale``.

    Quantizers see ``.linear`` as an ordinary Linear (its name gains ``.linear``); the Mul stays float.
    """

    def __init__(self, linear: nn.Linear, inv_scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", inv_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


def input_absmax(
    model: nn.Module, names: Iterable[str], batches: CalibrationReader | Iterable[Any]
) -> tuple[dict[str, torch.Tensor], list[list[str]], dict[str, torch.Tensor]]:
    """Per-input-channel max |x| of each named Linear over ``batches``, the groups of Linears that
    read one same input tensor (in the first batch) and so must share a scale, and each Linear's
    input in the first batch (in call order)."""
    modules = dict(model.named_modules())
    absmax: dict[str, torch.Tensor] = {}
    first_input: dict[str, torch.Tensor] = {}  # held, so that no two inputs share an id()
    hooks = []
    for name in names:

        def record(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0].detach()
            first_input.setdefault(name, args[0])
            channel_max = x.abs().reshape(-1, x.shape[-1]).amax(0).float()
            absmax[name] = torch.maximum(absmax[name], channel_max) if name in absmax else channel_max

        hooks.append(modules[name].register_forward_pre_hook(record))
    try:
        reader = as_reader(batches)  # the calibration protocol: a tuple's first item is the input
        reader.rewind()
        with torch.no_grad():
            while (batch := reader.get_next()) is not None:
                _call_output(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
    groups: dict[int, list[str]] = {}
    for name, tensor in first_input.items():  # dict order = call order: deterministic groups
        groups.setdefault(id(tensor), []).append(name)
    return absmax, list(groups.values()), first_input


def smoothing_scale(activation_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^α / max_k|W_kj|^(1−α) over the weights of every Linear of one group."""
    weight_max = torch.stack([w.detach().abs().amax(0) for w in weights]).amax(0).float()
    scale = activation_max.clamp(min=1e-5) ** alpha / weight_max.clamp(min=1e-5) ** (1 - alpha)
    return scale.clamp(min=1e-5)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _output_tensor(output: Any) -> torch.Tensor:
    """The first tensor of a model output (a tensor, a Hugging Face output, a tuple)."""
    while not isinstance(output, torch.Tensor):
        output = next(iter(output.values())) if isinstance(output, Mapping) else output[0]
    return output


def _head(batch: Any, rows: int) -> Any:
    """The first ``rows`` samples of a batch (a tensor or a dict of named inputs)."""
    if isinstance(batch, Mapping):
        return {key: value[:rows] for key, value in batch.items()}
    return batch[:rows]


def _close(value: torch.Tensor, expected: torch.Tensor) -> bool:
    return bool((value - expected).abs().max() <= 1e-3 * expected.abs().max() + 1e-6)


def _unwrapped(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    return module.linear if isinstance(module, SmoothedLinear) else module


def _try_fold(
    model: nn.Module, group: list[str], producer_name: str, scale: torch.Tensor, probe: Any, expected: dict
) -> bool:
    """Divide the producer's output rows by s and multiply the group's columns by s; keep it when
    the group's input became x / s and the model's output did not move (then the fold is exact and
    no Mul is needed), else restore both. ``expected``: the group's input and the model's output."""
    producer, members = _unwrapped(model, producer_name), [_unwrapped(model, n) for n in group]
    saved = {id(p): p.detach().clone() for m in (producer, *members) for p in m.parameters()}
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(group[0]).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    try:
        producer.weight.div_(scale[:, None].to(producer.weight.dtype))
        if producer.bias is not None:
            producer.bias.div_(scale.to(producer.bias.dtype))
        for member in members:
            member.weight.mul_(scale.to(member.weight.dtype))
        output = _output_tensor(_call_output(model, probe))
    finally:
        hook.remove()
    if seen and _close(seen[0], expected["input"] / scale) and _close(output, expected["output"]):
        return True
    for module in (producer, *members):
        for parameter in module.parameters():
            parameter.copy_(saved[id(parameter)])
    return False


def _call_output(model: nn.Module, batch: Any) -> Any:
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


def _producer(order: list[str], group: list[str], model: nn.Module) -> str | None:
    """The Linear run last before the group whose output width is the group's input width."""
    width = _unwrapped(model, group[0]).in_features
    before = order[: order.index(group[0])]
    for name in reversed(before):
        if name not in group and _unwrapped(model, name).out_features == width:
            return name
    return None


def smooth_linears(
    model: nn.Module,
    batches: CalibrationReader | Iterable[Any],
    alpha: float,
    selects: Callable[[str], bool] = lambda _: True,
    probe_rows: int = 8,
) -> dict[str, Any]:
    """Smooth, in place, every ``nn.Linear`` of ``model`` whose name ``selects`` (and that runs on
    ``batches``); return a summary (α, and per group its Linears, where 1/s went, the spread of
    its input channel ranges, max/median, before and after).

    Linears that read the same tensor share one scale: a group's s uses the largest weight column
    of all of them. 1/s folds into the Linear run just before the group when that is exact, as for
    attention's value projection before the output projection (softmax(qkᵀ)·V is linear in each
    channel of V): checked on ``probe_rows`` calibration samples (the group's input must become
    x / s and the model's output must not move). Otherwise a Mul by 1/s (shared by the group) runs
    before the group: :class:`SmoothedLinear`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise QtkError(f"smoothing alpha {alpha} is outside [0, 1]; use e.g. 0.85 (or leave it unset: off).")
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and n and selects(n)]
    absmax, groups, first_inputs = input_absmax(model, names, batches)
    if not absmax:
        raise QtkError(
            "smoothing saw no Linear run on the calibration batches; give batches the model runs on."
        )
    order = list(first_inputs)  # call order on the first batch
    reader = as_reader(batches)
    reader.rewind()
    probe = _head(reader.get_next(), probe_rows)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(g[0]).register_forward_pre_hook(
            lambda m, a, name=g[0]: seen.setdefault(name, a[0].detach())
        )
        for g in groups
    ]
    with torch.no_grad():
        try:
            reference_output = _output_tensor(_call_output(model, probe))
        finally:
            for hook in hooks:
                hook.remove()
    summary: dict[str, Any] = {"alpha": alpha, "groups": []}
    with torch.no_grad():
        for group in groups:
            linears = [model.get_submodule(n) for n in group]
            scale = smoothing_scale(absmax[group[0]], [lin.weight for lin in linears], alpha)
            producer = _producer(order, group, model)
            expected = {"input": seen.get(group[0]), "output": reference_output}
            if (
                producer
                and expected["input"] is not None
                and _try_fold(model, group, producer, scale, probe, expected)
            ):
                where = f"folded into {producer}"
            else:
                inv_scale = (1.0 / scale).to(linears[0].weight.dtype)
                for name, linear in zip(group, linears, strict=True):
                    linear.weight.mul_(scale.to(linear.weight.dtype))
                    _set_submodule(model, name, SmoothedLinear(linear, inv_scale))
                where = "Mul"
            before, after = absmax[group[0]], absmax[group[0]] / scale
            summary["groups"].append(
                {
                    "linears": group,
                    "scale": where,
                    "input_range_spread_before": float(before.max() / before.clamp(min=1e-8).median()),
                    "input_range_spread_after": float(after.max() / after.clamp(min=1e-8).median()),
                }
            )
    return summary
