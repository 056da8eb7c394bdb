"""The torch runner: one batch of inputs -> logits as numpy, on a resolved device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.runtime.batches import Runner


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is a user error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QtkError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise QtkError(f"device {device!r} is not a torch device; use auto, cpu or cuda") from exc


def to_device(inputs: Any, device: torch.device) -> Any:
    """``inputs`` (a tensor or array, a tuple/list or a mapping of them) as tensors on ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, np.ndarray):  # e.g. TextEncoder batches, fed to ORT as they are
        return torch.from_numpy(inputs).to(device)
    if isinstance(inputs, Mapping):
        return {name: to_device(value, device) for name, value in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(to_device(value, device) for value in inputs)
    return inputs


def to_float32(inputs: Any) -> Any:
    """``inputs`` with every float16/bfloat16/float64 tensor as float32 (what torch's INT8 kernels and
    the exported INT8 model take), keeping a tuple's or mapping's structure."""
    if isinstance(inputs, torch.Tensor):
        return inputs.float() if inputs.is_floating_point() and inputs.dtype != torch.float32 else inputs
    if isinstance(inputs, Mapping):
        return {name: to_float32(value) for name, value in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(to_float32(value) for value in inputs)
    return inputs


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Logits of ``model`` on one batch: ``model(x)`` for a tensor, ``model(*x)`` for a tuple,
    ``model(**x)`` for named inputs (a Hugging Face output's ``.logits``; a tuple's first item; a
    dict's first value, which is the exported ONNX model's first output)."""
    if isinstance(inputs, Mapping):
        output = model(**inputs)
    elif isinstance(inputs, tuple | list):
        output = model(*inputs)
    else:
        output = model(inputs)
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, Mapping):
        return next(iter(output.values()))
    return output[0] if isinstance(output, tuple | list) else output


def torch_runner(model: nn.Module, device: str | torch.device = "cpu") -> Runner:
    """Runner of ``model`` in eval mode without gradients; logits come back as float32 numpy on CPU.
    Torch's INT8 (converted) models run on CPU only."""
    model.eval()
    target = resolve_device(device)

    def run(inputs: Any) -> np.ndarray:
        with torch.no_grad():
            return call_model(model, to_device(inputs, target)).detach().float().cpu().numpy()

    return run
