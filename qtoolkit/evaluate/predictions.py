"""Top-1 predictions of torch models and ONNX sessions over the same batches, for accuracy and parity."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm.auto import tqdm


def torch_predictions(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], desc: str = "torch"
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, labels) of ``model`` in eval mode on CPU over ``(input, label)`` batches."""
    model.eval()
    predictions, labels = [], []
    with torch.no_grad():
        for inputs, targets in tqdm(batches, desc=f"evaluate {desc}", unit="batch", leave=False):
            predictions.append(model(inputs).argmax(-1).numpy())
            labels.append(np.asarray(targets))
    return np.concatenate(predictions), np.concatenate(labels)


def onnx_predictions(
    session: ort.InferenceSession, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], desc: str = "onnx"
) -> np.ndarray:
    """Predicted classes of an ONNX session with one input over ``(input, label)`` batches."""
    input_name = session.get_inputs()[0].name
    predictions = []
    for inputs, _ in tqdm(batches, desc=f"evaluate {desc}", unit="batch", leave=False):
        predictions.append(session.run(None, {input_name: inputs.numpy()})[0].argmax(-1))
    return np.concatenate(predictions)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples whose top-1 predictions agree."""
    return float(np.mean(np.asarray(a) == np.asarray(b)))
