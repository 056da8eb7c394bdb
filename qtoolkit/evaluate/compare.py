"""Evaluate FP32/INT8 torch and FP32/INT8 ONNX (on each chosen ONNX runtime) on the same held-out
batches: accuracy, parity, latency (same thread count for all) and size."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, measure_latency, paired_ratio
from qtoolkit.evaluate.metrics import accuracy, agreement, predictions
from qtoolkit.evaluate.noise_floor import find_kernel_swap, swapped_runner
from qtoolkit.runtime.batches import collect_logits
from qtoolkit.runtime.onnx_runtimes import DEFAULT_RUNTIME, OnnxModel, load_onnx, variant_name
from qtoolkit.runtime.ort import model_size_mb
from qtoolkit.runtime.torch_runner import call_model, torch_runner


@dataclass(frozen=True)
class LatencySettings:
    """How the variants are run and timed: ``threads`` for torch and every ONNX runtime; one
    ``measure_latency`` per variant at ``batch_size`` for the main table; ONNX variants on each of
    ``runtimes`` (names in :data:`qtoolkit.runtime.onnx_runtimes.RUNTIMES`, float ops in FP32 when
    ``strict_fp32``), also timed in ``rounds`` interleaved rounds at each of ``runtime_batch_sizes``."""

    threads: int = 2
    batch_size: int = 1
    warmup: int = 10
    repeats: int = 50
    runtimes: tuple[str, ...] = (DEFAULT_RUNTIME,)
    strict_fp32: bool = False
    runtime_batch_sizes: tuple[int, ...] = (1, 8)
    rounds: int = 3


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
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(metrics per variant, parity, runtimes). Accuracies are fractions in [0, 1];
    ``latency_batch(b)`` gives the inputs of batch size b that every variant is timed on.

    ONNX variants are keyed ``variant_name(kind, runtime)`` (``int8_onnx`` on onnxruntime,
    ``int8_onnx_openvino`` on OpenVINO); ``runtimes`` holds, per runtime, its version, settings and
    precision, and the interleaved-round latency of its FP32 and INT8 files at each batch size.
    """
    torch.set_num_threads(latency.threads)
    files = {"fp32_onnx": fp32_onnx, "int8_onnx": int8_onnx}
    file_of = {variant_name(kind, rt): path for rt in latency.runtimes for kind, path in files.items()}
    loaded = {
        variant_name(kind, runtime): load_onnx(path, runtime, latency.threads, latency.strict_fp32)
        for runtime in latency.runtimes
        for kind, path in files.items()
    }
    runners = {"fp32_torch": torch_runner(fp32_model), "int8_torch": torch_runner(int8_model)}
    runners.update({name: model.run for name, model in loaded.items()})
    swap = find_kernel_swap(int8_model)  # the parity noise floor, in the same pass
    if swap is not None:
        runners["int8_torch_swapped"] = swapped_runner(runners["int8_torch"], int8_model, swap[0])
    collected = collect_logits(runners, eval_batches, desc="evaluate fp32/int8 torch and onnx")
    labels = collected.labels
    predicted = {name: predictions(logits) for name, logits in collected.logits.items()}

    batch = latency_batch(latency.batch_size)
    timers = {
        "fp32_torch": lambda: call_model(fp32_model, batch),
        "int8_torch": lambda: call_model(int8_model, batch),
        **{name: model.call(batch) for name, model in loaded.items()},
    }
    sizes = {"fp32_torch": torch_size_mb(fp32_model), "int8_torch": torch_size_mb(int8_model)}
    sizes.update({name: model_size_mb(path) for name, path in file_of.items()})
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
            if name in loaded:
                metrics[name]["runtime"] = loaded[name].runtime
                metrics[name]["precision"] = loaded[name].info["precision"]
    parity: dict[str, Any] = {}
    for runtime in latency.runtimes:
        fp32_name, int8_name = variant_name("fp32_onnx", runtime), variant_name("int8_onnx", runtime)
        parity[f"{int8_name}_vs_int8_torch_agreement"] = agreement(
            predicted[int8_name], predicted["int8_torch"]
        )
        parity[f"{int8_name}_vs_fp32_torch_agreement"] = agreement(
            predicted[int8_name], predicted["fp32_torch"]
        )
        parity[f"{fp32_name}_vs_fp32_torch_agreement"] = agreement(
            predicted[fp32_name], predicted["fp32_torch"]
        )
    parity["samples"] = len(labels)
    parity["noise_floor"] = (
        None
        if swap is None
        else {
            "swap": swap[1],
            "int8_torch_vs_swapped_agreement": agreement(
                predicted["int8_torch_swapped"], predicted["int8_torch"]
            ),
        }
    )
    return metrics, parity, runtime_latency(loaded, latency_batch, latency)


def runtime_latency(
    loaded: dict[str, OnnxModel], latency_batch: Callable[[int], Any], latency: LatencySettings
) -> dict[str, Any]:
    """Per runtime: version, settings, precision, and best-round latency (ms) of its FP32 and INT8
    files at each of ``latency.runtime_batch_sizes``, every file on every runtime timed in the same
    interleaved rounds; ``ratios`` are paired per-round ratios of each runtime over the first."""
    section: dict[str, Any] = {
        runtime: {
            **loaded[variant_name("int8_onnx", runtime)].info,
            "latency_ms": {},
            "latency_ms_per_round": {},
        }
        for runtime in latency.runtimes
    }
    first = latency.runtimes[0]
    for batch_size in latency.runtime_batch_sizes:
        batch = latency_batch(batch_size)
        calls = {name: model.call(batch) for name, model in loaded.items()}
        per_round = interleaved_latency(
            calls, rounds=latency.rounds, warmup=latency.warmup, repeats=latency.repeats
        )
        best = best_of_rounds(per_round)
        for runtime in latency.runtimes:
            entry = section[runtime]
            kinds = {kind: variant_name(kind, runtime) for kind in ("fp32_onnx", "int8_onnx")}
            entry["latency_ms"][str(batch_size)] = {
                kind: round(best[name], 3) for kind, name in kinds.items()
            }
            entry["latency_ms_per_round"][str(batch_size)] = {
                kind: per_round[name] for kind, name in kinds.items()
            }
            ratios = entry.setdefault("ratios", {}).setdefault(str(batch_size), {})
            ratios["fp32_over_int8"] = paired_ratio(per_round, kinds["fp32_onnx"], kinds["int8_onnx"])
            if runtime != first:
                for kind, name in kinds.items():
                    ratios[f"{kind}_over_{first}"] = paired_ratio(per_round, name, variant_name(kind, first))
    return {"rounds": latency.rounds, "repeats": latency.repeats, "by_runtime": section}
