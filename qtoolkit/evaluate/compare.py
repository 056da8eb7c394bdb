"""Evaluate FP32/INT8 torch and FP32/INT8 ONNX on the same held-out batches: accuracy, parity,
latency (same thread count for all) and size."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qtoolkit.evaluate.latency import measure_latency
from qtoolkit.evaluate.ort_runtime import make_session, model_size_mb
from qtoolkit.evaluate.predictions import (
    TorchForward,
    agreement,
    default_forward,
    onnx_feed,
    onnx_predictions,
    torch_predictions,
)


@dataclass(frozen=True)
class LatencySettings:
    threads: int = 2
    batch_size: int = 1
    warmup: int = 10
    repeats: int = 50


def torch_size_mb(model: nn.Module) -> float:
    """Bytes of the serialized state_dict (packed INT8 weights for quantized models), in MB."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def compare_variants(
    fp32_model: nn.Module,
    int8_model: nn.Module,
    fp32_onnx: Path,
    int8_onnx: Path,
    eval_batches: Iterable[tuple[Any, torch.Tensor]],
    latency_batch: Callable[[int], Any],
    latency: LatencySettings,
    forward: TorchForward = default_forward,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(metrics per variant, parity). Accuracies are fractions in [0, 1]; ``latency_batch(b)`` gives
    the inputs of batch size b that every variant is timed on."""
    torch.set_num_threads(latency.threads)
    sessions = {
        name: make_session(path, latency.threads)
        for name, path in (("fp32_onnx", fp32_onnx), ("int8_onnx", int8_onnx))
    }
    predictions: dict[str, np.ndarray] = {}
    predictions["fp32_torch"], labels = torch_predictions(fp32_model, eval_batches, "fp32 torch", forward)
    predictions["int8_torch"], _ = torch_predictions(int8_model, eval_batches, "int8 torch", forward)
    for name, session in sessions.items():
        predictions[name] = onnx_predictions(session, eval_batches, name.replace("_", " "))

    batch = latency_batch(latency.batch_size)
    timers = {
        "fp32_torch": lambda: forward(fp32_model, batch),
        "int8_torch": lambda: forward(int8_model, batch),
        **{name: (lambda s=session: s.run(None, onnx_feed(s, batch))) for name, session in sessions.items()},
    }
    sizes = {
        "fp32_torch": torch_size_mb(fp32_model),
        "int8_torch": torch_size_mb(int8_model),
        "fp32_onnx": model_size_mb(fp32_onnx),
        "int8_onnx": model_size_mb(int8_onnx),
    }
    metrics = {}
    with torch.no_grad():
        for name, call in timers.items():
            timing = measure_latency(call, latency.warmup, latency.repeats)
            metrics[name] = {
                "accuracy": float(np.mean(predictions[name] == labels)),
                "latency_ms": round(timing.median_ms, 3),
                "latency_p90_ms": round(timing.p90_ms, 3),
                "size_mb": round(sizes[name], 3),
            }
    parity = {
        "int8_onnx_vs_int8_torch_agreement": agreement(predictions["int8_onnx"], predictions["int8_torch"]),
        "int8_onnx_vs_fp32_torch_agreement": agreement(predictions["int8_onnx"], predictions["fp32_torch"]),
        "fp32_onnx_vs_fp32_torch_agreement": agreement(predictions["fp32_onnx"], predictions["fp32_torch"]),
        "samples": len(labels),
    }
    return metrics, parity
