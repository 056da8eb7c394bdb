"""``qtk bench``: latency of an image model as FP32/INT8 torch, FP32 ONNX, qtoolkit's INT8 ONNX and
onnxruntime's own ``quantize_static`` INT8 ONNX (QDQ, per-channel) made from the same FP32 ONNX.

Random weights are fine for speed (BatchNorm statistics are randomised so that folded biases are
non-zero, as in a trained model). All variants run in one process with the same thread count;
rounds alternate between variants and the best median per variant is kept, so that background
noise hits every variant alike.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qtoolkit.evaluate.latency import measure_latency
from qtoolkit.evaluate.ort_runtime import make_session, model_size_mb
from qtoolkit.export import export_int8_onnx, export_onnx
from qtoolkit.models import create_model
from qtoolkit.peers.ort_quantizer import ort_quantize_static
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
        ort_quantize_static(
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
