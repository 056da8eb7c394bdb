"""Evaluate FP32/INT8 torch and FP32/INT8 ONNX on the same held-out batches: accuracy, parity,
latency (same thread count for all) and size."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qtoolkit.evaluate.latency import measure_latency
from qtoolkit.evaluate.metrics import accuracy, agreement, predictions
from qtoolkit.runtime.batches import collect_logits
from qtoolkit.runtime.ort import make_session, model_size_mb, ort_call, ort_runner
from qtoolkit.runtime.torch_runner import call_model, torch_runner


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
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(metrics per variant, parity). Accuracies are fractions in [0, 1]; ``latency_batch(b)`` gives
    the inputs of batch size b that every variant is timed on."""
    torch.set_num_threads(latency.threads)
    sessions = {
        name: make_session(path, latency.threads)
        for name, path in (("fp32_onnx", fp32_onnx), ("int8_onnx", int8_onnx))
    }
    runners = {"fp32_torch": torch_runner(fp32_model), "int8_torch": torch_runner(int8_model)}
    runners.update({name: ort_runner(session) for name, session in sessions.items()})
    collected = collect_logits(runners, eval_batches, desc="evaluate fp32/int8 torch and onnx")
    labels = collected.labels
    predicted = {name: predictions(logits) for name, logits in collected.logits.items()}

    batch = latency_batch(latency.batch_size)
    timers = {
        "fp32_torch": lambda: call_model(fp32_model, batch),
        "int8_torch": lambda: call_model(int8_model, batch),
        **{name: ort_call(session, batch) for name, session in sessions.items()},
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
                "accuracy": accuracy(predicted[name], labels),
                "latency_ms": round(timing.median_ms, 3),
                "latency_p90_ms": round(timing.p90_ms, 3),
                "size_mb": round(sizes[name], 3),
            }
    parity = {
        "int8_onnx_vs_int8_torch_agreement": agreement(predicted["int8_onnx"], predicted["int8_torch"]),
        "int8_onnx_vs_fp32_torch_agreement": agreement(predicted["int8_onnx"], predicted["fp32_torch"]),
        "fp32_onnx_vs_fp32_torch_agreement": agreement(predicted["fp32_onnx"], predicted["fp32_torch"]),
        "samples": len(labels),
    }
    return metrics, parity
