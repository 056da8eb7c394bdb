"""Top-1 predictions of torch models and ONNX sessions over the same batches, for accuracy and parity.

Model inputs are a tensor, or a mapping of named tensors (``input_ids``, ``attention_mask``, …);
ONNX sessions are fed by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm.auto import tqdm

TorchForward = Callable[[nn.Module, Any], torch.Tensor]


def default_forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    from qtoolkit.tasks.base import call_model

    return call_model(model, inputs)


def onnx_feed(session: ort.InferenceSession, inputs: Any) -> dict[str, np.ndarray]:
    """Session feed for a tensor (the session's first input) or a mapping (matched by name)."""
    names = [value.name for value in session.get_inputs()]
    if isinstance(inputs, Mapping):
        return {name: np.asarray(inputs[name]) for name in names if name in inputs}
    return {names[0]: np.asarray(inputs)}


def torch_predictions(
    model: nn.Module,
    batches: Iterable[tuple[Any, torch.Tensor]],
    desc: str = "torch",
    forward: TorchForward = default_forward,
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, labels) of ``model`` in eval mode on CPU over ``(inputs, label)`` batches."""
    model.eval()
    predictions, labels = [], []
    with torch.no_grad():
        for inputs, targets in tqdm(batches, desc=f"evaluate {desc}", unit="batch", leave=False):
            predictions.append(forward(model, inputs).argmax(-1).numpy())
            labels.append(np.asarray(targets))
    return np.concatenate(predictions), np.concatenate(labels)


def onnx_predictions(
    session: ort.InferenceSession, batches: Iterable[tuple[Any, torch.Tensor]], desc: str = "onnx"
) -> np.ndarray:
    """Predicted classes of an ONNX session over ``(inputs, label)`` batches."""
    predictions = []
    for inputs, _ in tqdm(batches, desc=f"evaluate {desc}", unit="batch", leave=False):
        predictions.append(session.run(None, onnx_feed(session, inputs))[0].argmax(-1))
    return np.concatenate(predictions)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples whose top-1 predictions agree."""
    return float(np.mean(np.asarray(a) == np.asarray(b)))
