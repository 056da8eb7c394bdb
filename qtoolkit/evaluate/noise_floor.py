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
more inputs than either (the gate itself: ``qtoolkit.report.writer.parity_limit``). Swaps are a registry: each says whether it applies to a model and gives a
context in which the model runs the other kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["KERNEL_SWAPS", "KernelSwap", "find_kernel_swap", "swapped_runner"]


@dataclass(frozen=True)
class KernelSwap:
    """A float kernel of a model that can be exchanged for an equivalent one."""

    name: str
    describe: Callable[[nn.Module], str | None]  # "sdpa → eager" when it applies to the model, else None
    swapped: Callable[[nn.Module], contextlib.AbstractContextManager[Any]]


def _hf_model(model: nn.Module) -> Any:
    return next((m for m in model.modules() if hasattr(m, "set_attn_implementation")), None)


def _other_attention(kernel: str | None) -> str | None:
    return {"sdpa": "eager", "eager": "sdpa"}.get(kernel or "")


def _describe_attention(model: nn.Module) -> str | None:
    hf = _hf_model(model)
    kernel = getattr(getattr(hf, "config", None), "_attn_implementation", None)
    other = _other_attention(kernel)
    return f"attention {kernel} → {other}" if hf is not None and other else None


@contextlib.contextmanager
def _swap_attention(model: nn.Module) -> Iterator[None]:
    hf = _hf_model(model)
    kernel = hf.config._attn_implementation
    hf.set_attn_implementation(_other_attention(kernel))
    try:
        yield
    finally:
        hf.set_attn_implementation(kernel)


KERNEL_SWAPS: dict[str, KernelSwap] = {
    "attention": KernelSwap("attention", _describe_attention, _swap_attention),
}


def find_kernel_swap(model: nn.Module) -> tuple[KernelSwap, str] | None:
    """The first registered swap that applies to ``model``, with its description."""
    for swap in KERNEL_SWAPS.values():
        description = swap.describe(model)
        if description:
            return swap, description
    return None


def swapped_runner(run: Callable[[Any], Any], model: nn.Module, swap: KernelSwap) -> Callable[[Any], Any]:
    """``run`` (a runner of ``model``) executed with ``swap``'s other kernel, restored after each batch."""

    def run_swapped(inputs: Any) -> Any:
        with swap.swapped(model):
            return run(inputs)

    return run_swapped
