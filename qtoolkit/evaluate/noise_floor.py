"""The parity noise floor: how often torch's own INT8 model changes its top-1 under a kernel swap.

A dynamic INT8 model rounds each Linear input to 8 bits at run time. Any change of float rounding
upstream of such a rounding (another attention kernel, another summation order, onnxruntime's
LayerNorm instead of torch's) moves a few values across a rounding boundary, and a deep encoder
amplifies those flips: a bit-correct re-implementation (the ONNX export) cannot agree with torch on
every input. So the parity gate is set from a measurement, on the same held-out batches:

    d_floor = 1 − agreement(torch INT8, torch INT8 with one kernel swapped)
    pass  ⇔  1 − agreement(INT8 ONNX, torch INT8) ≤ max(1 − min_agreement, factor · d_floor)

The export is a perturbation of the same kind as the swap but touches every float op, not one
kernel; ``factor`` (default 2) allows for that and for sampling noise. A model that is stable under
the swap (d_floor = 0) keeps the recipe's fixed ``min_agreement``; a broken export disagrees on far
more inputs than either (the gate itself: ``qtoolkit.report.writer.parity_limit``). Swaps are a registry, tried in order; the first that applies to the model is measured:

- ``attention``: Hugging Face models that switch attention kernels (sdpa ↔ eager);
- ``batch-halves``: any dynamically quantized model (MPNet, LSTM, ...) run on each half of every
  batch: the same inputs and padding, but each per-tensor activation range is measured over half
  the batch, so roundings move as they do under another kernel.

The same idea on the ONNX side (:func:`ort_fusion_floor`): one INT8 file, run by onnxruntime with
graph optimizations disabled (the QDQ graph as written: DequantizeLinear -> float op ->
QuantizeLinear, what qtoolkit's QDQ simulation computes) and with all of them (fused integer kernels
QLinearConv/QGemm/QLinearAdd…, whose requantization rounds some values 1 LSB differently). Their
disagreement is the part of a parity gap that comes from onnxruntime's kernels, not from the export:

    d_fusion = 1 − agreement(ORT unfused, ORT fused)      (same file, same inputs)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from qtoolkit.evaluate.metrics import agreement, max_abs_diff, predictions
from qtoolkit.runtime.batches import collect_logits
from qtoolkit.runtime.ort import make_session, to_numpy

__all__ = ["KERNEL_SWAPS", "KernelSwap", "find_kernel_swap", "ort_fusion_floor", "swapped_runner"]


Runner = Callable[[Any], Any]


@dataclass(frozen=True)
class KernelSwap:
    """A way to run a model with other float rounding: ``describe(model)`` says what is swapped (None
    when the swap does not apply), ``wrap(run, model)`` gives the runner that runs it swapped."""

    name: str
    describe: Callable[[nn.Module], str | None]
    wrap: Callable[[Runner, nn.Module], Runner]


def _hf_model(model: nn.Module) -> Any:
    return next((m for m in model.modules() if hasattr(m, "set_attn_implementation")), None)


def _other_attention(hf: Any) -> str | None:
    kernel = getattr(getattr(hf, "config", None), "_attn_implementation", None)
    other = {"sdpa": "eager", "eager": "sdpa"}.get(kernel or "")
    if other == "sdpa" and not getattr(hf, "_supports_sdpa", False):
        return None  # e.g. MPNet: eager only (set_attn_implementation would be a no-op)
    return other


def _describe_attention(model: nn.Module) -> str | None:
    hf = _hf_model(model)
    other = _other_attention(hf) if hf is not None else None
    return f"attention {hf.config._attn_implementation} → {other}" if other else None


def _wrap_attention(run: Runner, model: nn.Module) -> Runner:
    hf = _hf_model(model)

    def run_swapped(inputs: Any) -> Any:
        kernel = hf.config._attn_implementation
        hf.set_attn_implementation(_other_attention(hf))
        try:
            return run(inputs)
        finally:
            hf.set_attn_implementation(kernel)

    return run_swapped


def _is_dynamic(model: nn.Module) -> bool:
    from torch.ao.nn.quantized import dynamic as nnqd

    return any(isinstance(m, nnqd.Linear | nnqd.modules.rnn.RNNBase) for m in model.modules())


def _halves(inputs: Any) -> tuple[Any, Any] | None:
    first = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
    n = int(first.shape[0])
    if n < 2:
        return None
    if isinstance(inputs, Mapping):
        return {k: v[: n // 2] for k, v in inputs.items()}, {k: v[n // 2 :] for k, v in inputs.items()}
    return inputs[: n // 2], inputs[n // 2 :]


def _wrap_halves(run: Runner, model: nn.Module) -> Runner:
    def run_halves(inputs: Any) -> Any:
        halves = _halves(inputs)
        if halves is None:
            return run(inputs)
        return np.concatenate([np.asarray(run(half)) for half in halves])

    return run_halves


KERNEL_SWAPS: dict[str, KernelSwap] = {
    "attention": KernelSwap("attention", _describe_attention, _wrap_attention),
    "batch-halves": KernelSwap(
        "batch-halves",
        lambda model: (
            "each batch run in two halves (dynamic ranges per half)" if _is_dynamic(model) else None
        ),
        _wrap_halves,
    ),
}


def find_kernel_swap(model: nn.Module) -> tuple[KernelSwap, str] | None:
    """The first registered swap that applies to ``model``, with its description."""
    for swap in KERNEL_SWAPS.values():
        description = swap.describe(model)
        if description:
            return swap, description
    return None


def swapped_runner(run: Runner, model: nn.Module, swap: KernelSwap) -> Runner:
    """``run`` (a runner of ``model``) executed with ``swap`` applied."""
    return swap.wrap(run, model)


ORT_FUSION_SWAP = "onnxruntime graph optimizations all (fused integer kernels) → disabled (unfused QDQ)"


def ort_fusion_floor(
    onnx_path: str | os.PathLike[str], batches: Iterable[Any], threads: int = 2
) -> dict[str, Any]:
    """Top-1 agreement and max |Δlogit| of ``onnx_path`` run by onnxruntime unfused vs fused.

    ``batches`` yields input tensors (or ``(inputs, label)``) of a one-input model. Returns
    ``agreement`` (1 − d_fusion), ``max_abs_diff``, ``samples`` and ``swap`` (what was swapped).
    """
    sessions = {level: make_session(onnx_path, threads, optimization=level) for level in ("disabled", "all")}
    name = sessions["all"].get_inputs()[0].name

    def runner(session: Any) -> Runner:
        return lambda inputs: session.run(None, {name: to_numpy(inputs)})[0]

    runs = {level: runner(session) for level, session in sessions.items()}
    logits = collect_logits(runs, batches, arity=1, desc="fusion floor", progress=False).logits
    unfused, fused = logits["disabled"], logits["all"]
    return {
        "agreement": agreement(predictions(unfused), predictions(fused)),
        "max_abs_diff": max_abs_diff(unfused, fused),
        "samples": len(fused),
        "swap": ORT_FUSION_SWAP,
    }
