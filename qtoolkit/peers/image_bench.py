"""``qtk bench``: latency of an image model as FP32/INT8 torch, FP32 ONNX, qtoolkit's INT8 ONNX and
onnxruntime's own ``quantize_static`` INT8 ONNX (QDQ, per-channel) made from the same FP32 ONNX.

Random weights are fine for speed (BatchNorm statistics are randomised so that folded biases are
non-zero, as in a trained model). All variants run in one process with the same thread count, in
interleaved rounds (:func:`qtoolkit.evaluate.latency.interleaved_latency`): the table shows each
variant's best round median, and the two ratios are medians of per-round ratios (paired, so that a
slow phase of the host cancels), with their range in the JSON.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, paired_ratio
from qtoolkit.export import export_int8_onnx, export_onnx
from qtoolkit.models import create_model
from qtoolkit.peers.ort_quantizer import ort_quantize_static
from qtoolkit.quantize import ObserverSpec, StaticQuantConfig, quantize
from qtoolkit.report.environment import collect_environment
from qtoolkit.runtime.ort import make_session, model_size_mb, ort_call


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Random BatchNorm statistics and biases, so that folded biases are non-zero as in a trained model."""
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
    randomise_batchnorm(model)
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
        results: dict[str, Any] = {
            "sizes_mb": sizes,
            "latency_ms": {},
            "latency_ms_per_round": {},
            "ratios": {},
        }
        for batch_size in batch_sizes:
            x = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
            calls = {
                "fp32_torch": lambda x=x: model(x),
                "int8_torch": lambda x=x: int8_model(x),
                **{key: ort_call(session, x) for key, session in sessions.items()},
            }
            with torch.no_grad():
                per_round = interleaved_latency(calls, rounds=rounds, warmup=5, repeats=repeats)
            key = str(batch_size)
            results["latency_ms"][key] = {k: round(v, 3) for k, v in best_of_rounds(per_round).items()}
            results["latency_ms_per_round"][key] = per_round
            results["ratios"][key] = {
                "fp32_over_int8_onnx": paired_ratio(per_round, "fp32_onnx", "int8_onnx"),
                "qtoolkit_over_ort_int8_onnx": paired_ratio(per_round, "int8_onnx", "ort_int8_onnx"),
            }
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
        ratios = results["ratios"][batch]
        lines.append(
            f"| {batch} | {ms['fp32_torch']:.2f} | {ms['int8_torch']:.2f} | {ms['fp32_onnx']:.2f} | "
            f"{ms['int8_onnx']:.2f} | {ms['ort_int8_onnx']:.2f} | {ratios['fp32_over_int8_onnx']['median']:.2f}× | "
            f"{ratios['qtoolkit_over_ort_int8_onnx']['median']:.2f}× |"
        )
    sizes = results["sizes_mb"]
    lines += [
        "",
        f"sizes MB: FP32 ONNX {sizes['fp32_onnx']:.2f}, INT8 ONNX (qtoolkit) {sizes['int8_onnx']:.2f}, "
        f"INT8 ONNX (ORT) {sizes['ort_int8_onnx']:.2f}; latency = best of {results['rounds']} interleaved "
        f"round medians of {results['repeats']} runs (ms); ratios = median of per-round ratios",
    ]
    return "\n".join(lines) + "\n"
