"""``qtk bench``: latency of an image model as FP32/INT8 torch, FP32 ONNX, qtoolkit's INT8 ONNX and
onnxruntime's own ``quantize_static`` INT8 ONNX (QDQ, per-channel) made from the same FP32 ONNX.

Random weights are fine for speed (BatchNorm statistics are randomised so that folded biases are
non-zero, as in a trained model). All variants run in one process with the same thread count;
rounds alternate between variants and the best median per variant is kept, so that background
noise hits every variant alike.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qtoolkit.evaluate.latency import measure_latency
from qtoolkit.evaluate.ort_runtime import make_session, model_size_mb
from qtoolkit.export import export_int8_onnx, export_onnx
from qtoolkit.models import create_model
from qtoolkit.quantize import ObserverSpec, StaticQuantConfig, quantize
from qtoolkit.report.environment import collect_environment


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)


# calibration method name -> onnxruntime CalibrationMethod attribute
ORT_CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _ort_quantize_static(
    fp32_path: Path,
    out_path: Path,
    batches: list[np.ndarray],
    input_name: str,
    method: str = "minmax",
    per_channel: bool = True,
) -> None:
    """onnxruntime's own ``quantize_static`` (QDQ, u8 activations, s8 weights) of ``fp32_path``,
    calibrated with ``method`` (minmax | entropy | percentile) on ``batches``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, items: list[np.ndarray]) -> None:
            self.items = iter([{input_name: b} for b in items])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    # the module, not the ``quantize`` function that onnxruntime.quantization re-exports by that name
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")

    create = ort_quantize.create_calibrator

    def create_chunked(*args: Any, **kwargs: Any) -> Any:
        # onnxruntime keeps every activation of every calibration batch before reducing them
        # (gigabytes for a 260x260 mobile net); feeding it one batch per collect_data call keeps
        # one batch at a time: min/max merge exactly across calls, histograms merge (re-binned when
        # a later batch widens the range).
        calibrator = create(*args, **kwargs)
        collect = calibrator.collect_data

        def collect_per_batch(reader: CalibrationDataReader) -> None:
            while (item := reader.get_next()) is not None:
                collect(Reader([item[input_name]]))

        calibrator.collect_data = collect_per_batch
        return calibrator

    prepared = out_path.with_name(f"{out_path.stem}_preprocessed.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    ort_quantize.create_calibrator = create_chunked
    try:
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, ORT_CALIBRATION_METHODS[method]),
        )
    finally:
        ort_quantize.create_calibrator = create
    prepared.unlink(missing_ok=True)


def bench_image_model(
    name: str = "resnet18",
    image_size: int = 224,
    batch_sizes: tuple[int, ...] | list[int] = (1, 8),
    threads: int = 2,
    repeats: int = 50,
    rounds: int = 3,
) -> dict[str, Any]:
    """Measure every variant at every batch size; returns a JSON-able dict (see module docstring)."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = create_model(name).eval()
    _randomise_batchnorm(model)
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(4, 3, image_size, image_size, generator=generator) for _ in range(4)]
    example = calibration[0][:1]
    config = StaticQuantConfig(observers=ObserverSpec(activation="minmax", reduce_range=False))
    int8_model = quantize(model, config, calibration=calibration, example_input=example).int8_model
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32_onnx": Path(tmp) / "fp32.onnx", "int8_onnx": Path(tmp) / "int8.onnx"}
        export_onnx(model, example, paths["fp32_onnx"])
        export_int8_onnx(int8_model, example, paths["int8_onnx"])
        paths["ort_int8_onnx"] = Path(tmp) / "ort_int8.onnx"
        _ort_quantize_static(
            paths["fp32_onnx"], paths["ort_int8_onnx"], [b.numpy() for b in calibration], "input"
        )
        sessions = {key: make_session(path, threads) for key, path in paths.items()}
        sizes = {key: round(model_size_mb(path), 3) for key, path in paths.items()}
        results: dict[str, Any] = {"sizes_mb": sizes, "latency_ms": {}}
        for batch_size in batch_sizes:
            x = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
            feed = x.numpy()
            calls = {
                "fp32_torch": lambda x=x: model(x),
                "int8_torch": lambda x=x: int8_model(x),
                **{
                    key: (lambda s=s, f=feed: s.run(None, {s.get_inputs()[0].name: f}))
                    for key, s in sessions.items()
                },
            }
            best: dict[str, float] = {}
            with torch.no_grad():
                for _ in range(rounds):
                    for key, call in calls.items():
                        median = measure_latency(call, warmup=5, repeats=repeats).median_ms
                        best[key] = min(best.get(key, float("inf")), median)
            results["latency_ms"][str(batch_size)] = {k: round(v, 3) for k, v in best.items()}
    results.update(
        model=name,
        image_size=image_size,
        repeats=repeats,
        rounds=rounds,
        environment=collect_environment(threads),
    )
    return results


def format_bench(results: dict[str, Any]) -> str:
    """Markdown table with the two ratios the static-PTQ goals are stated in."""
    env = results["environment"]
    lines = [
        f"### {results['model']} {results['image_size']}×{results['image_size']}, {env['threads']} threads, "
        f"{env['cpu']} ({', '.join(env['cpu_flags'])}), torch {env['torch']}, onnxruntime {env['onnxruntime']}",
        "",
        "| batch | FP32 torch | INT8 torch | FP32 ONNX | INT8 ONNX (qtoolkit) | INT8 ONNX (ORT quantize_static) "
        "| FP32/INT8 ONNX speed-up | qtoolkit/ORT latency |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, ms in results["latency_ms"].items():
        lines.append(
            f"| {batch} | {ms['fp32_torch']:.2f} | {ms['int8_torch']:.2f} | {ms['fp32_onnx']:.2f} | "
            f"{ms['int8_onnx']:.2f} | {ms['ort_int8_onnx']:.2f} | {ms['fp32_onnx'] / ms['int8_onnx']:.2f}× | "
            f"{ms['int8_onnx'] / ms['ort_int8_onnx']:.2f}× |"
        )
    sizes = results["sizes_mb"]
    lines += [
        "",
        f"sizes MB: FP32 ONNX {sizes['fp32_onnx']:.2f}, INT8 ONNX (qtoolkit) {sizes['int8_onnx']:.2f}, "
        f"INT8 ONNX (ORT) {sizes['ort_int8_onnx']:.2f}; latency = best of {results['rounds']} medians "
        f"of {results['repeats']} runs (ms)",
    ]
    return "\n".join(lines) + "\n"
